use strict;
use warnings;
use Digest::MD5 qw(md5_hex);

my $seed = 12345;
sub rnd { $seed = ($seed * 1103515245 + 12345) % 2147483648; return $seed >> 4; }

my @words;
for (1 .. 150000) {
    my $len = 1 + rnd() % 10;
    my $w = '';
    $w .= chr(97 + rnd() % 26) for 1 .. $len;
    push @words, $w;
}
print "words ", scalar(@words), " ", md5_hex(join ',', @words[0 .. 999]), "\n";

# hashes: counts, hash of arrays, hash of hashes, delete
my %count;
$count{$_}++ for @words;
my @top = (sort { $count{$b} <=> $count{$a} || $a cmp $b } keys %count)[0 .. 14];
print "top ", join(' ', map { "$_=$count{$_}" } @top), "\n";
my %byprefix;
push @{ $byprefix{ substr($_, 0, 2) } }, $_ for @words;
my %stats;
for my $p (keys %byprefix) {
    my $list = $byprefix{$p};
    $stats{$p} = { n => scalar(@$list), len => length(join '', @$list), first => (sort @$list)[0] };
}
print "prefixes ", scalar(keys %stats), " ",
    md5_hex(join ';', map { "$_:$stats{$_}{n}:$stats{$_}{len}:$stats{$_}{first}" } sort keys %stats), "\n";
delete $count{$_} for grep { length($_) > 5 } keys %count;
print "after-delete ", scalar(keys %count), "\n";

# sorting: string, numeric, Schwartzian transform
my @s1 = sort @words;
my @nums = map { rnd() } 1 .. 100000;
my @s2 = sort { $a <=> $b } @nums;
my @s3 = map { $_->[1] } sort { $a->[0] <=> $b->[0] or $a->[1] cmp $b->[1] } map { [ length($_), $_ ] } @words;
print "sort ", md5_hex(join ',', @s1[ map { $_ * 97 } 0 .. 1000 ]), " ", $s2[0], " ", $s2[-1], " ",
    md5_hex(join ',', @s3[ map { $_ * 131 } 0 .. 1000 ]), "\n";

# regexes: match, global match, substitution with code, split, tr
my $text = join ' ', @words;
my @m = $text =~ /\b([aeiou]\w*[aeiou])\b/g;
print "match ", scalar(@m), " ", md5_hex(join ',', @m), "\n";
(my $pig = join(' ', @words[0 .. 49999])) =~ s/\b(\w)(\w*)\b/$2$1ay/g;
print "subst ", length($pig), " ", md5_hex($pig), "\n";
my @fields = split /[aeiou]+/, substr($text, 0, 400000);
print "split ", scalar(@fields), "\n";
(my $up = $text) =~ tr/a-m/N-Z/;
print "tr ", md5_hex($up), "\n";
my %seen;
my $caps = 0;
while ($text =~ /(\w)(\w)\2(\w)/g) { $seen{"$1$2$3"}++; $caps++; }
print "backref ", $caps, " ", scalar(keys %seen), "\n";

# sprintf and string growth
my $s = '';
$s .= sprintf("%05d:%x:%-8s|", $_, $_ * $_, $words[$_]) for 0 .. 99999;
print "growth ", length($s), " ", md5_hex($s), " ", unpack('%32C*', $s), "\n";
my @rows = map { sprintf("%8.3f %10s %e", $_ / 7, $words[$_], $_ * 1.5) } 0 .. 49999;
print "sprintf ", md5_hex(join "\n", @rows), "\n";
my $rep = 'abc' x 100000;
substr($rep, $_ * 3, 1, 'Z') for 0 .. 49999;
print "substr ", md5_hex($rep), "\n";

# nested data, splice, reverse, join of large lists
my @matrix = map { my $i = $_; [ map { ($i * $_) % 1009 } 0 .. 199 ] } 0 .. 199;
my $trace = 0;
$trace += $matrix[$_][$_] for 0 .. 199;
splice(@words, 1000, 50000);
print "misc ", $trace, " ", scalar(@words), " ", md5_hex(join '', reverse @words[0 .. 9999]), "\n";
print "done\n";

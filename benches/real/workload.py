import collections, hashlib, json, os, queue, random, re, sys, threading, zlib

def digest(obj):
    return hashlib.sha256(repr(obj).encode()).hexdigest()[:24]

rng = random.Random(20240601)
letters = 'abcdefghijklmnopqrstuvwxyz'
words = [''.join(rng.choice(letters) for _ in range(rng.randint(1, 10))) for _ in range(120000)]
print('words', len(words), len(set(words)), digest(words[::101]))

# sorting: plain, with key, stable multi-key, reverse
s1 = sorted(words)
s2 = sorted(words, key=lambda w: (len(w), w[::-1]))
s3 = sorted(range(len(words)), key=lambda i: (words[i][-1:], -i))
print('sorted', digest(s1[::211]), digest(s2[::307]), digest(s3[::401]))

# dicts, Counter, defaultdict, sets
counts = collections.Counter(words)
print('top', counts.most_common(12))
byprefix = collections.defaultdict(list)
for i, w in enumerate(words):
    byprefix[w[:2]].append(i)
print('prefixes', len(byprefix), digest(sorted((k, len(v), sum(v)) for k, v in byprefix.items())))
index = {w: i for i, w in enumerate(words)}
for w in words[::3]:
    index.pop(w, None)
print('index', len(index), sum(index.values()))
sets = [set(words[i:i + 500]) for i in range(0, 60000, 250)]
inter = [len(a & b) for a, b in zip(sets, sets[1:])]
print('sets', sum(inter), max(inter))

# strings: growth, join, split, format, bytes
buf = ''
for i in range(40000):
    buf += '%d:%x,' % (i, i * i)
parts = buf.split(',')
print('growth', len(buf), len(parts), hashlib.md5(buf.encode()).hexdigest())
lines = ['{:>8}|{:<12}|{:08.3f}'.format(i, words[i], i / 7) for i in range(0, 100000, 3)]
text = '\n'.join(lines)
print('format', len(text), hashlib.sha1(text.encode()).hexdigest())
ba = bytearray()
for i in range(100000):
    ba += words[i % len(words)].encode()
print('bytearray', len(ba), zlib.crc32(ba))

# json round trip
records = [{'id': i, 'name': words[i], 'tags': [words[(i * 7) % len(words)], words[(i * 13) % len(words)]],
            'score': (i * 2654435761) % 1000 / 8.0, 'nested': {'a': [i, i + 1, {'b': str(i)}]}}
           for i in range(25000)]
js = json.dumps(records, sort_keys=True)
back = json.loads(js)
print('json', len(js), hashlib.sha256(js.encode()).hexdigest(), back == records)
pretty = json.dumps(back[:2000], indent=2)
print('json-indent', len(pretty), hashlib.sha256(pretty.encode()).hexdigest()[:32])

# zlib
comp = zlib.compress(js.encode(), 6)
print('zlib', len(comp), zlib.crc32(comp), zlib.decompress(comp) == js.encode())

# re
joined = ' '.join(words)
pat = re.compile(r'([aeiou]{2,})([^aeiou\s]+)')
found = pat.findall(joined)
print('re-findall', len(found), digest(found[::97]))
pig = re.sub(r'\b(\w)(\w*)\b', lambda m: m.group(2) + m.group(1) + 'ay', ' '.join(words[:40000]))
print('re-sub', len(pig), hashlib.md5(pig.encode()).hexdigest())
splits = re.split(r'[aeiou]+', joined[:300000])
print('re-split', len(splits), digest(splits[::53]))

# hashlib over many small and a few large inputs
h = hashlib.sha256()
for w in words:
    h.update(w.encode())
big = hashlib.blake2b(joined.encode() * 4).hexdigest()
print('hash', h.hexdigest(), big[:32])

# threads: work items and results cross threads (objects allocated in one thread are freed in
# another); the result is deterministic because it is assembled by item index.
inq, outq = queue.Queue(), queue.Queue()
lock = threading.Lock()
shared = collections.Counter()

def worker():
    while True:
        item = inq.get()
        if item is None:
            break
        idx, chunk = item
        acc = {}
        for j, w in enumerate(chunk):
            acc[w] = acc.get(w, 0) + j
        text = '|'.join(sorted(acc))
        local = collections.Counter(w[0] for w in chunk)
        with lock:
            shared.update(local)
        outq.put((idx, hashlib.sha1(text.encode()).hexdigest(), [w.upper() for w in chunk[:50]]))

threads = [threading.Thread(target=worker) for _ in range(4)]
for t in threads:
    t.start()
nitems = 0
for i in range(0, len(words), 1500):
    inq.put((nitems, words[i:i + 1500]))
    nitems += 1
for _ in threads:
    inq.put(None)
for t in threads:
    t.join()
results = sorted(outq.get() for _ in range(nitems))
print('threads', nitems, digest([r[1] for r in results]), digest([r[2][:3] for r in results]))
print('shared', sorted(shared.items())[:6], sum(shared.values()))

# fork after the threads are gone: the child allocates and reports through a pipe
sys.stdout.flush()
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    data = json.dumps(sorted(counts.items())[:8000]).encode()
    os.write(w, hashlib.sha256(data).hexdigest().encode())
    os._exit(0)
os.close(w)
msg = b''
while True:
    chunk = os.read(r, 4096)
    if not chunk:
        break
    msg += chunk
_, st = os.waitpid(pid, 0)
print('fork', msg.decode(), os.waitstatus_to_exitcode(st))

del records, back, sets, index, byprefix
print('done')
sys.exit(0)

.headers on
.mode list
PRAGMA journal_mode = WAL;
PRAGMA cache_size = -20000;
CREATE TABLE items(id INTEGER PRIMARY KEY, grp INTEGER NOT NULL, name TEXT NOT NULL, val REAL, blob BLOB);
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100000)
INSERT INTO items(id, grp, name, val, blob)
  SELECT x, x % 97, printf('name-%08d-%s', (x * 7919) % 100003, hex(x * x)), ((x * 37) % 1000) / 8.0,
         zeroblob(x % 64)
  FROM c;
CREATE INDEX items_grp_name ON items(grp, name);
CREATE INDEX items_val ON items(val);
CREATE TABLE groups(grp INTEGER PRIMARY KEY, label TEXT);
WITH RECURSIVE g(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM g WHERE x < 96)
INSERT INTO groups SELECT x, 'group-' || x || '-' || substr('abcdefghijklmnopqrstuvwxyz', x % 26 + 1, 5) FROM g;
SELECT count(*), sum(val), min(name), max(name), sum(length(blob)) FROM items;
SELECT grp, count(*) AS n, round(avg(val), 6) AS avg_val, min(name), max(name), total(length(name))
  FROM items GROUP BY grp ORDER BY grp;
SELECT g.label, count(*) AS n, round(sum(i.val), 3)
  FROM items i JOIN groups g ON g.grp = i.grp
  WHERE i.val > 60 GROUP BY g.label ORDER BY n DESC, g.label LIMIT 20;
SELECT id, name, val FROM items ORDER BY val DESC, name ASC LIMIT 25;
SELECT substr(name, 6, 2) AS p, count(*) FROM items GROUP BY p HAVING count(*) > 900 ORDER BY p;
SELECT grp, name, val, rank() OVER (PARTITION BY grp ORDER BY val DESC, id) AS r
  FROM items WHERE grp < 3 AND id % 50 = 0 ORDER BY grp, r LIMIT 40;
SELECT count(DISTINCT val), count(DISTINCT substr(name, 1, 9)) FROM items;
SELECT length(group_concat(name, ',')) FROM (SELECT name FROM items WHERE name LIKE '%-1%' ORDER BY name);
UPDATE items SET name = name || '-updated', val = val * 2 WHERE id % 3 = 0;
DELETE FROM items WHERE id % 5 = 0;
SELECT count(*), sum(val), max(length(name)) FROM items;
CREATE TEMP TABLE t2 AS SELECT grp, group_concat(id, ' ') AS ids FROM (SELECT grp, id FROM items ORDER BY grp, id) GROUP BY grp;
SELECT grp, length(ids), substr(ids, 1, 40) FROM t2 ORDER BY grp LIMIT 10;
WITH RECURSIVE fib(n, a, b) AS (SELECT 1, 0, 1 UNION ALL SELECT n + 1, b, a + b FROM fib WHERE n < 80)
SELECT n, a FROM fib WHERE n % 10 = 0;
PRAGMA integrity_check;
VACUUM;
PRAGMA integrity_check;
SELECT count(*) FROM items WHERE grp = 42 AND name > 'name-0005';

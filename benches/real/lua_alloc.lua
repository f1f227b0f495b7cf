-- lua_alloc.lua: the Lua interpreter's own allocation pattern, for benches/external.py's `lua` row.
--
-- Lua allocates every table, string, closure and upvalue through one realloc-style function
-- (lua_Alloc, which the standalone interpreter maps to realloc/free), and its incremental
-- garbage collector frees them in sweeps. What this script makes: short-lived trees of small
-- tables (GC churn), strings built piece by piece and interned (many sizes, many frees),
-- tables grown by appending (realloc of the array part through doubling sizes), closures, and a
-- long-lived dictionary that grows and is rebuilt. Deterministic: it prints one checksum line,
-- which must be the same under every allocator.
--
-- usage: lua lua_alloc.lua [SCALE]   (SCALE: work multiplier, default 1)

local scale = tonumber(arg and arg[1]) or 1
local sum = 0

local function mix(x)
  sum = (sum * 31 + x) % 4294967291
end

-- 1. Trees of small tables, built and dropped (the binary-trees pattern).
local function tree(depth)
  if depth == 0 then return {} end
  return { tree(depth - 1), tree(depth - 1) }
end

local function count(t)
  if t[1] == nil then return 1 end
  return 1 + count(t[1]) + count(t[2])
end

for round = 1, 6 * scale do
  local keep = tree(14)
  for d = 4, 14, 2 do
    for _ = 1, 2 ^ (14 - d) do
      mix(count(tree(d)))
    end
  end
  mix(count(keep))
end

-- 2. Strings: built by concatenation and formatting, interned as table keys, substituted.
for round = 1, 4 * scale do
  local words = {}
  for i = 1, 60000 do
    local w = string.format("w%d_%s", i % 7919, string.rep("x", i % 37))
    words[#words + 1] = w
  end
  local seen = {}
  for i = 1, #words do
    local w = words[i]
    seen[w] = (seen[w] or 0) + 1
  end
  local n = 0
  for _, c in pairs(seen) do n = n + c end
  mix(n)
  local text = table.concat(words, " ", 1, 20000)
  local replaced = text:gsub("x+", function(s) return #s end)
  mix(#replaced)
end

-- 3. Arrays grown by appending and shrunk by removal (realloc through many sizes).
for round = 1, 8 * scale do
  local lists = {}
  for i = 1, 400 do
    local l = {}
    for j = 1, (i * 37) % 1500 do l[j] = j * i end
    lists[i] = l
  end
  for i = 1, 400, 3 do
    local l = lists[i]
    while #l > 10 do table.remove(l) end
  end
  for i = 1, 400 do mix(#lists[i]) end
end

-- 4. Closures and upvalues made per call.
for round = 1, 3 * scale do
  local acc = 0
  for i = 1, 200000 do
    local k = i % 97
    local f = function(x) return x + k end
    acc = (acc + f(i)) % 1000003
  end
  mix(acc)
end

-- 5. A long-lived dictionary that grows, is filtered into a new one, and sorted.
local dict = {}
for i = 1, 150000 * scale do
  dict["k" .. (i * 7919 % 1000003)] = { i, tostring(i) }
end
local kept = {}
for k, v in pairs(dict) do
  if v[1] % 3 ~= 0 then kept[#kept + 1] = k end
end
table.sort(kept)
mix(#kept)
mix(#kept[1] + #kept[#kept])

print(string.format("lua_alloc checksum %d", sum))

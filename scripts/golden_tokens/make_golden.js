// Writes tests/data/tokenizer/golden_<name>.json: token ids (and the decoded text) that the
// official Hugging Face tokenizers library gives for a set of varied texts, for the
// tokenizer.json files in ../shared and two small ones it writes beside the goldens. The C++
// tests compare eigenkv's tokenizer against them.
//
//   cd scripts/golden_tokens && npm install && node make_golden.js [path/to/shared]
//
// Ids are those of encode(text) with addSpecialTokens = false; like every caller of the library,
// it matches added tokens written in the text (eigenkv: parse_special = true). "decoded" is the
// library's decode of those ids without the special ones.
"use strict";

const fs = require("fs");
const path = require("path");
const { Tokenizer, byteLevelAlphabet, byteLevelPreTokenizer } = require("tokenizers");

const repoRoot = path.resolve(__dirname, "..", "..");
const sharedDir = path.resolve(process.argv[2] || path.join(repoRoot, "..", "shared"));
const outDir = path.join(repoRoot, "tests", "data", "tokenizer");

function resolveTokenizer(relPath) {
  const sharedPrefix = "../shared/";
  return relPath.startsWith(sharedPrefix)
    ? path.join(sharedDir, relPath.slice(sharedPrefix.length))
    : path.join(repoRoot, relPath);
}

// Tokenizer files by golden name, relative to the repository root.
const TOKENIZERS = {
  llama3: "../shared/tokenizers/llama3/tokenizer.json",
  "spm-bpe-32k": "../shared/tokenizers/spm-bpe-32k/tokenizer.json",
  llama2: "../shared/tokenizers/llama2/tokenizer.json",
  "tinystories-656k": "../shared/models/TinyStories-656K/tokenizer.json",
  // Made below, for pipeline parts the shared files do not use.
  metaspace: "tests/data/tokenizer/metaspace_tokenizer.json",
  "byte-level": "tests/data/tokenizer/byte_level_tokenizer.json",
};

const TEXTS = [
  "",
  "Hello world",
  " Hello world",
  "Hello, world! How are you doing today?",
  "The quick brown fox jumps over the lazy dog.",
  "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. " +
    "One day, she saw a big, red ball.",
  "I'm sure they'll say we'd've done it, isn't it? You're right; I've seen THEIR'S.",
  "'S 'T 'RE 'VE 'M 'LL 'D 's 't 're",
  "DON'T SHOUT, it's OK. 'Quoted' text and \"double quotes\".",
  "   leading and trailing spaces   ",
  "multiple     spaces    between   words",
  "tabs\tand\nnewlines\r\nand\n\n\nblank lines\n",
  "\n\n  \t \n",
  " ",
  "\n",
  "1234567890 3.14159 -42 1,000,000 2024-01-15 0x1F",
  "3 33 333 3333 33333 333333 3333333",
  "w048 7tuijk dsdfhu abc123def 1st 2nd 3rd",
  "def fibonacci(n):\n    if n <= 1:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
  "int main() {\n\tstd::vector<int> v{1, 2, 3};\n\tfor (auto& x : v) x *= 2;\n\treturn 0;\n}",
  '{"key": "value", "list": [1, 2, 3], "nested": {"a": null}}',
  "Visit https://example.com/path?query=1&b=2 or mail me@example.org",
  "# Title\n\n- item one\n- item two\n\n**bold** and _italic_ `code`",
  "Führer, Straße, Größe – äöü ÄÖÜ ß",
  "C'est déjà l'été, où êtes-vous ? Ça va très bien.",
  "Привет, мир! Съешь же ещё этих мягких французских булок.",
  "Καλημέρα κόσμε, τι κάνεις;",
  "我想在apple工作1314151天～ 你好，世界！",
  "こんにちは世界。カタカナとひらがな、漢字も。",
  "안녕하세요 세계! 한국어 텍스트입니다.",
  "مرحبا بالعالم! كيف حالك؟ ١٢٣٤",
  "नमस्ते दुनिया, आप कैसे हैं?",
  "កាន់តែពិសេសអាចខលចេញ สวัสดีครับ שלום עולם",
  "🚀 (normal) 😶‍🌫️ (multiple emojis concatenated) ✅ 👨‍👩‍👧‍👦 🦙🦙",
  "🇺🇸🇯🇵 👍🏽 ❤️ 😁",
  "∑_{i=1}^{n} x² ≤ ∞ ± √2 ≠ π ≈ 3.14 °C €100 £5 ¥",
  "zero\u200bwidth\u00a0nbsp\u3000ideographic\u2003em",
  "e\u0301 vs é, n\u0303 vs ñ",
  "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa !!!!!!!!!! ...........",
  "Hello, y'all! How are you 😁 ?我想在apple工作1314151天～",
  "<|begin_of_text|>Hello<|eot_id|> <|start_header_id|>user<|end_header_id|>\n\nHi",
  "<s>Hello</s> <s> world</s><unk>",
  "<|start_story|>Once upon a time<|end_story|> the end",
  "Fill the [MASK] here and  [MASK]\tthere<|endoftext|>",
];

// Ids of the added tokens marked special. Decoding drops them before asking the library, since
// it still shows special tokens whose content it normalized ("normalized": true) when told to
// skip special tokens.
function specialIds(file) {
  const added = JSON.parse(fs.readFileSync(file, "utf8")).added_tokens || [];
  return new Set(added.filter((t) => t.special).map((t) => t.id));
}

// stories260K's vocabulary with the Metaspace pre-tokenizer and decoder in place of the
// Prepend/Replace normalizer: SentencePiece's other spelling in tokenizer.json files.
function writeMetaspaceTokenizer(relPath) {
  const base = JSON.parse(
    fs.readFileSync(path.join(sharedDir, "models/stories260K-hf/tokenizer.json"), "utf8"));
  const metaspace = { replacement: "\u2581", prepend_scheme: "first", split: true };
  base.normalizer = null;
  base.pre_tokenizer = { type: "Metaspace", ...metaspace };
  base.decoder = { type: "Metaspace", ...metaspace };
  fs.writeFileSync(resolveTokenizer(relPath), JSON.stringify(base) + "\n");
}

// A small GPT-2-style byte-level BPE (ByteLevel pre-tokenizer with its regex and a prefix space,
// ByteLevel decoder), its merges learnt here from the test texts by plain pair counting.
function writeByteLevelTokenizer(relPath) {
  const pre = byteLevelPreTokenizer(true, true);
  const words = new Map();  // space-joined symbols -> count
  for (const text of [...TEXTS, ...heldOutTexts()]) {
    for (const [word] of pre.preTokenizeString(text)) {
      const key = Array.from(word).join(" ");
      words.set(key, (words.get(key) || 0) + 1);
    }
  }
  const vocab = {};
  for (const c of byteLevelAlphabet().sort()) vocab[c] = Object.keys(vocab).length;
  const merges = [];
  for (let round = 0; round < 400; ++round) {
    const pairs = new Map();
    for (const [key, count] of words) {
      const symbols = key.split(" ");
      for (let i = 0; i + 1 < symbols.length; ++i) {
        const pair = symbols[i] + " " + symbols[i + 1];
        pairs.set(pair, (pairs.get(pair) || 0) + count);
      }
    }
    let best = null;
    for (const [pair, count] of pairs) {
      if (best === null || count > pairs.get(best) || (count === pairs.get(best) && pair < best)) {
        best = pair;
      }
    }
    if (best === null) break;
    const [left, right] = best.split(" ");
    merges.push(best);
    vocab[left + right] = Object.keys(vocab).length;
    const merged = new Map();
    for (const [key, count] of words) {
      const symbols = key.split(" ");
      const out = [];
      for (let i = 0; i < symbols.length; ++i) {
        if (i + 1 < symbols.length && symbols[i] === left && symbols[i + 1] === right) {
          out.push(left + right);
          ++i;
        } else {
          out.push(symbols[i]);
        }
      }
      merged.set(out.join(" "), (merged.get(out.join(" ")) || 0) + count);
    }
    words.clear();
    for (const [key, count] of merged) words.set(key, count);
  }
  const next = Object.keys(vocab).length;
  const added = (id, content, special, lstrip) =>
    ({ id, content, single_word: false, lstrip, rstrip: false, normalized: false, special });
  const tokenizer = {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: [added(next, "<|endoftext|>", true, false), added(next + 1, "[MASK]", false, true)],
    normalizer: null,
    pre_tokenizer: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
    post_processor: null,
    decoder: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: { type: "BPE", dropout: null, unk_token: null, continuing_subword_prefix: null,
             end_of_word_suffix: null, fuse_unk: false, byte_fallback: false,
             ignore_merges: false, vocab, merges },
  };
  fs.writeFileSync(resolveTokenizer(relPath), JSON.stringify(tokenizer) + "\n");
}

// Held-out text: chunks of WikiText-2 test and of TinyStories valid_a's second half, cut at line
// starts, and PTB-style copies of the WikiText chunks (every 12th word "<unk>", sentences marked
// "<s>" ... "</s>", and other vocabularies' special strings), so that the default handling of
// special-token strings is checked on real text, not only on short cases.
function heldOutTexts() {
  const chunks = (file, count, size) => {
    const text = fs.readFileSync(path.join(sharedDir, file), "utf8");
    const out = [];
    for (let k = 0; k < count; ++k) {
      let start = Math.floor((text.length * (k + 0.5)) / (count + 1));
      start = text.indexOf("\n", start) + 1;
      let end = text.indexOf("\n", start + size);
      if (end < 0) end = text.length;
      out.push(text.slice(start, end));
    }
    return out;
  };
  const wiki = chunks("data/wikitext-2-raw/wiki.test.raw", 8, 2500);
  const stories = chunks("data/tinystories/valid_a.txt", 4, 2500);
  const specials = ["<|endoftext|>", "<|begin_of_text|>", "<|eot_id|>", "[MASK]"];
  const ptb = wiki.map((t, k) => {
    let n = 0;
    const unk = t.replace(/[^\s]+/g, (w) => (++n % 12 === 0 ? "<unk>" : w));
    const marked = unk.split(/(?<=[.!?]) /).map((s) => "<s> " + s + " </s>").join(" ");
    return k % 2 === 0 ? marked : marked + specials[k % specials.length] + " " + t.slice(0, 200);
  });
  return [...wiki, ...stories, ...ptb];
}

async function goldenFor(name, relPath) {
  const file = resolveTokenizer(relPath);
  const tokenizer = Tokenizer.fromFile(file);
  const special = specialIds(file);
  const cases = [];
  for (const text of [...TEXTS, ...heldOutTexts()]) {
    const encoding = await tokenizer.encode(text, null, { addSpecialTokens: false });
    const ids = encoding.getIds();
    const decoded = await tokenizer.decode(ids.filter((id) => !special.has(id)), true);
    cases.push({ text, ids, decoded });
  }
  const out = path.join(outDir, `golden_${name}.json`);
  const version = require("tokenizers/package.json").version;
  // One case a line keeps the file small and its diffs readable.
  const lines = [
    "{",
    `  "tokenizer": ${JSON.stringify(relPath)},`,
    `  "generator": "scripts/golden_tokens/make_golden.js, tokenizers (npm) ${version}",`,
    '  "cases": [',
    cases.map((c) => "    " + JSON.stringify(c)).join(",\n"),
    "  ]",
    "}",
  ];
  fs.writeFileSync(out, lines.join("\n") + "\n");
  console.log(`wrote ${path.relative(repoRoot, out)}: ${cases.length} cases`);
}

async function main() {
  fs.mkdirSync(outDir, { recursive: true });
  writeMetaspaceTokenizer(TOKENIZERS.metaspace);
  writeByteLevelTokenizer(TOKENIZERS["byte-level"]);
  for (const [name, relPath] of Object.entries(TOKENIZERS)) {
    await goldenFor(name, relPath);
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});

// The official OpenAI Node.js client (npm "openai") against `eigenkv serve`: the calls a user of
// that SDK makes, and the errors it should see, on the bundled stories260K model.
//   node tests/node/openai_client_test.mjs EIGENKV_BINARY MODEL
// Exits 0 when every case passes, 1 otherwise (printing each failure), 77 when the package is
// not installed (ctest reports a skip).
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";

let OpenAI;
try {
  ({ default: OpenAI } = await import("openai"));
} catch {
  console.log("skipped: the npm package 'openai' is not installed (cd tests/node && npm ci)");
  process.exit(77);
}

const [binary, model] = process.argv.slice(2);
const failures = [];
function check(ok, what) {
  if (!ok) failures.push(what);
  console.log(`${ok ? "ok  " : "FAIL"} ${what}`);
}

// Starts the server on a free port; resolves with the process and its port.
function startServer(args) {
  return new Promise((resolve, reject) => {
    const child = spawn(binary, ["serve", "-m", model, "--port", "0", "-t", "1", ...args], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    const lines = createInterface({ input: child.stdout });
    const timer = setTimeout(() => reject(new Error("the server did not start in 30 s")), 30000);
    lines.once("line", (line) => {
      clearTimeout(timer);
      const port = Number(line.slice(line.lastIndexOf(":") + 1));
      if (!line.includes("listening on") || !port) reject(new Error(`unexpected first line: ${line}`));
      else resolve({ child, port });
    });
    child.once("exit", (code) => reject(new Error(`the server exited with ${code}`)));
  });
}

async function expectError(promise, status, what, code) {
  try {
    await promise;
    check(false, `${what}: no error`);
  } catch (e) {
    check(e instanceof OpenAI.APIError && e.status === status &&
              (code === undefined || e.code === code),
          `${what}: ${status}${code ? " " + code : ""} (got ${e.status} ${e.code ?? ""} ${e.message})`);
  }
}

const { child, port } = await startServer(["--parallel", "4", "--ctx", "256", "--alias", "tiny"]);
try {
  const client = new OpenAI({ baseURL: `http://127.0.0.1:${port}/v1`, apiKey: "unused", maxRetries: 0 });

  // Completions: greedy text, logprobs, n choices with seeds, echo.
  const greedy = await client.completions.create({
    model: "stories260K", prompt: "Once upon a time", max_tokens: 12, temperature: 0, logprobs: 2,
  });
  check(greedy.object === "text_completion" && greedy.choices.length === 1, "completion object");
  check(greedy.choices[0].text.length > 0, `greedy text: ${JSON.stringify(greedy.choices[0].text)}`);
  const lp = greedy.choices[0].logprobs;
  check(lp.tokens.length === 12 && lp.token_logprobs.every((x) => x <= 0) &&
            Object.keys(lp.top_logprobs[0]).length >= 1,
        "logprobs: 12 tokens, log-probabilities <= 0, top alternatives");
  check(greedy.usage.completion_tokens === 12, "usage counts the completion");
  const many = await client.completions.create({
    model: "tiny", prompt: ["Once upon a time", "Lily"], n: 2, max_tokens: 8, temperature: 1, seed: 5,
  });
  check(many.choices.length === 4 && many.choices.map((c) => c.index).join() === "0,1,2,3",
        "n = 2 on two prompts: four choices in order");
  const again = await client.completions.create({
    model: "tiny", prompt: ["Once upon a time", "Lily"], n: 2, max_tokens: 8, temperature: 1, seed: 5,
  });
  check(JSON.stringify(again.choices.map((c) => c.text)) === JSON.stringify(many.choices.map((c) => c.text)),
        "the same seed gives the same choices");
  const echo = await client.completions.create({
    model: "stories260K", prompt: "Once upon a time", max_tokens: 0, echo: true, logprobs: 0,
  });
  check(echo.choices[0].logprobs.token_logprobs[0] === null &&
            echo.choices[0].logprobs.token_logprobs.slice(1).every((x) => x <= 0),
        "echo scores the prompt (first token null)");

  // Streaming completions and chat.
  let streamed = "";
  for await (const chunk of await client.completions.create({
    model: "stories260K", prompt: "Once upon a time", max_tokens: 12, temperature: 0, stream: true,
  })) {
    streamed += chunk.choices[0]?.text ?? "";
  }
  check(streamed === greedy.choices[0].text, "streamed completion equals the whole one");
  const chat = await client.chat.completions.create({
    model: "stories260K", messages: [{ role: "user", content: "Tell me a story." }], max_tokens: 10,
    temperature: 0, n: 2, response_format: { type: "text" }, tools: [],
  });
  check(chat.object === "chat.completion" && chat.choices.length === 2 &&
            chat.choices[0].message.role === "assistant",
        "chat completion with n = 2, response_format text and no tools");
  let chatText = "";
  for await (const chunk of await client.chat.completions.create({
    model: "stories260K", messages: [{ role: "user", content: "Tell me a story." }], max_tokens: 10,
    temperature: 0, stream: true, stream_options: { include_usage: true },
  })) {
    chatText += chunk.choices[0]?.delta?.content ?? "";
    if (chunk.usage) check(chunk.usage.completion_tokens === 10, "streamed chat usage");
  }
  check(chatText === chat.choices[0].message.content, "streamed chat equals the whole one");

  // Models.
  const list = await client.models.list();
  const ids = [];
  for await (const m of list) ids.push(m.id);
  check(ids.join() === "stories260K,tiny", `models.list: ${ids.join()}`);
  const one = await client.models.retrieve("tiny");
  check(one.id === "tiny" && one.object === "model", "models.retrieve of an alias");
  await expectError(client.models.retrieve("gpt-4o"), 404, "models.retrieve of another model",
                    "model_not_found");
  await expectError(client.completions.create({ model: "gpt-4o", prompt: "hi" }), 404,
                    "a completion for another model", "model_not_found");

  // Errors the SDK raises as BadRequestError.
  await expectError(client.completions.create({ model: "stories260K", prompt: "hi", temperature: 9 }),
                    400, "temperature out of range");
  await expectError(client.chat.completions.create({
    model: "stories260K", messages: [{ role: "user", content: "hi" }],
    tools: [{ type: "function", function: { name: "f", parameters: {} } }],
  }), 400, "a tool (function calling is not built)");
  await expectError(client.chat.completions.create({
    model: "stories260K", messages: [{ role: "user", content: "hi" }],
    response_format: { type: "json_object" },
  }), 400, "JSON mode");
} finally {
  child.kill("SIGTERM");
}

// API keys: the SDK's Authorization header.
const keyed = await startServer(["--api-key", "sekrit"]);
try {
  const good = new OpenAI({ baseURL: `http://127.0.0.1:${keyed.port}/v1`, apiKey: "sekrit", maxRetries: 0 });
  const bad = new OpenAI({ baseURL: `http://127.0.0.1:${keyed.port}/v1`, apiKey: "wrong", maxRetries: 0 });
  const r = await good.completions.create({ model: "stories260K", prompt: "Once", max_tokens: 2 });
  check(r.choices.length === 1, "the right key is served");
  await expectError(bad.completions.create({ model: "stories260K", prompt: "Once", max_tokens: 2 }),
                    401, "a wrong key", "invalid_api_key");
} finally {
  keyed.child.kill("SIGTERM");
}

console.log(failures.length ? `${failures.length} failed` : "all passed");
process.exit(failures.length ? 1 : 0);

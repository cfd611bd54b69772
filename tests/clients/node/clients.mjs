// The Node rows of tests/clients/test_client_matrix.py: one chat turn through one client, as its docs
// show it. Nothing is configured here but what a user of the proxy sets anyway: OPENAI_BASE_URL and
// OPENAI_API_KEY (read by both libraries from the environment), and the user, named the way each
// library names end users. Prints the answer's text on stdout.
//
//   OPENAI_BASE_URL=http://127.0.0.1:8080/v1 OPENAI_API_KEY=mp-... MATRIX_USER=alice \
//     MATRIX_TEXT='My favourite colour is teal.' node clients.mjs ai-sdk-default
import OpenAI from "openai";
import { generateText, streamText } from "ai";
import { openai } from "@ai-sdk/openai";

const MODEL = "gpt-4o-mini";
const user = process.env.MATRIX_USER;
const text = process.env.MATRIX_TEXT;

const rows = {
  // openai-node: Chat Completions, the body's `user`.
  "openai-node-chat": async () => {
    const client = new OpenAI({ maxRetries: 0 });
    const completion = await client.chat.completions.create({
      model: MODEL,
      messages: [{ role: "user", content: text }],
      user,
    });
    return completion.choices[0].message.content;
  },
  "openai-node-stream": async () => {
    const client = new OpenAI({ maxRetries: 0 });
    const stream = await client.chat.completions.create({
      model: MODEL,
      messages: [{ role: "user", content: text }],
      stream: true,
      user,
    });
    let out = "";
    for await (const chunk of stream) out += chunk.choices[0]?.delta?.content ?? "";
    return out;
  },
  // The AI SDK's default model, openai(MODEL), calls the Responses API.
  "ai-sdk-default": async () => {
    const result = await generateText({
      model: openai(MODEL),
      prompt: text,
      providerOptions: { openai: { user } },
      maxRetries: 0,
    });
    return result.text;
  },
  "ai-sdk-default-stream": async () => {
    const result = streamText({
      model: openai(MODEL),
      prompt: text,
      providerOptions: { openai: { user } },
      maxRetries: 0,
    });
    let out = "";
    for await (const piece of result.textStream) out += piece;
    return out;
  },
  // openai.chat(MODEL): Chat Completions.
  "ai-sdk-chat": async () => {
    const result = await generateText({
      model: openai.chat(MODEL),
      prompt: text,
      providerOptions: { openai: { user } },
      maxRetries: 0,
    });
    return result.text;
  },
};

const row = rows[process.argv[2]];
if (row === undefined) {
  console.error(`unknown row ${process.argv[2]}; rows: ${Object.keys(rows).join(", ")}`);
  process.exit(2);
}
process.stdout.write(String(await row()));

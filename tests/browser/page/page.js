// What a real web app does with the relay: sign in with the Firebase JS SDK (against the
// Auth Emulator), call the relay with fetch and with the official openai JS SDK.
// The suite calls these through Selenium and checks what comes back; times are
// measured here, in the page, with performance.now().
import { initializeApp } from "firebase/app";
import {
  connectAuthEmulator, createUserWithEmailAndPassword, inMemoryPersistence, initializeAuth,
  signInWithEmailAndPassword,
} from "firebase/auth";
import OpenAI from "openai";

const params = new URLSearchParams(location.search);
const relay = params.get("relay");
const emulator = params.get("emulator");
const project = params.get("project");

// In-memory persistence and no popup/redirect resolver: nothing but the emulator is asked.
const app = initializeApp({ apiKey: "demo-api-key", projectId: project });
const auth = initializeAuth(app, { persistence: inMemoryPersistence });
connectAuthEmulator(auth, emulator, { disableWarnings: true });

const MESSAGES = [{ role: "user", content: "Hello" }];

async function signUp(email, password) {
  const credential = await createUserWithEmailAndPassword(auth, email, password);
  return { uid: credential.user.uid };
}

async function signIn(email, password) {
  const credential = await signInWithEmailAndPassword(auth, email, password);
  // Forced refresh: the custom claim set after sign-up is in the new token.
  return credential.user.getIdToken(true);
}

function headers(token) {
  return token ? { authorization: `Bearer ${token}` } : {};
}

// An SSE stream read chunk by chunk through ReadableStream, each event stamped with
// the time its bytes reached the page.
async function streamWithFetch(path, token) {
  const started = performance.now();
  const response = await fetch(relay + path, { headers: headers(token) });
  const headersAt = performance.now() - started;
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  const events = [];
  let buffer = "";
  let reads = 0;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    reads += 1;
    const at = performance.now() - started;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).trim()).join("\n");
      events.push({ at, data });
    }
  }
  return { status: response.status, contentType: response.headers.get("content-type"),
           headersAt, reads, events };
}

// Any call; the status, JSON body and the headers a page may read (CORS-exposed only).
async function fetchJson(path, token, method = "GET", body = null) {
  const init = { method, headers: headers(token) };
  if (body !== null) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(relay + path, init);
  const text = await response.text();
  let json = null;
  try { json = JSON.parse(text); } catch { json = null; }
  return {
    status: response.status, body: json, text,
    requestId: response.headers.get("x-request-id"),
    processingMs: response.headers.get("openai-processing-ms"),
    retryAfter: response.headers.get("retry-after"),
  };
}

// fetch as a page on an unlisted origin sees it: a TypeError, nothing readable.
async function fetchOutcome(path, token) {
  try {
    const response = await fetch(relay + path, { headers: headers(token) });
    return { status: response.status, text: await response.text() };
  } catch (error) {
    return { errorName: error.name, errorMessage: String(error.message) };
  }
}

function sdk(token) {
  return new OpenAI({
    apiKey: token, baseURL: `${relay}/api/openai/v1`, dangerouslyAllowBrowser: true,
    maxRetries: 0,
  });
}

async function sdkChat(token) {
  const completion = await sdk(token).chat.completions.create(
    { model: "gpt-4o-mini", messages: MESSAGES });
  return { id: completion.id, text: completion.choices[0].message.content };
}

// The fake upstream spaces its chunks by the query parameter (no custom header: the
// relay's preflight allows only the SDK's own headers, as in production).
function spaced(intervalMs) {
  return { query: { x_test_chunk_interval_ms: String(intervalMs) } };
}

async function sdkChatStream(token, intervalMs) {
  const started = performance.now();
  const stream = await sdk(token).chat.completions.create(
    { model: "gpt-4o-mini", messages: MESSAGES, stream: true }, spaced(intervalMs));
  const arrivals = [];
  const text = [];
  for await (const chunk of stream) {
    arrivals.push(performance.now() - started);
    const content = chunk.choices[0]?.delta?.content;
    if (content) text.push(content);
  }
  return { arrivals, text: text.join("") };
}

async function sdkResponsesStream(token, intervalMs) {
  const started = performance.now();
  const stream = await sdk(token).responses.create(
    { model: "gpt-4o-mini", input: "Hello", stream: true }, spaced(intervalMs));
  const events = [];
  for await (const event of stream) {
    events.push({ type: event.type, at: performance.now() - started,
                  delta: event.type === "response.output_text.delta" ? event.delta : null });
  }
  return { events };
}

async function sdkError(token) {
  try {
    await sdk(token).models.list();
    return { ok: true };
  } catch (error) {
    return { name: error.constructor.name, status: error.status ?? null,
             message: String(error.message) };
  }
}

window.relayTest = {
  signUp, signIn, streamWithFetch, fetchJson, fetchOutcome, sdkChat, sdkChatStream,
  sdkResponsesStream, sdkError,
};
window.pageReady = true;
document.getElementById("state").textContent = "ready";

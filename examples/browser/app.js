// Sign in with Firebase, then call the relay with the ID token and stream the answer.
// The relay must list this page's origin in AUTHZ_CORS_ORIGINS, or the browser blocks
// every call (a TypeError: "Failed to fetch").
import { initializeApp } from "firebase/app";
import {
  connectAuthEmulator, createUserWithEmailAndPassword, initializeAuth, inMemoryPersistence,
  signInWithEmailAndPassword,
} from "firebase/auth";

const $ = (id) => document.getElementById(id);
const status = (text) => { $("status").textContent = text; };
let auth = null;

function firebaseAuth() {
  if (auth === null) {
    // A real project: pass its web config (apiKey, authDomain, projectId) and drop
    // connectAuthEmulator. The emulator accepts any apiKey.
    const app = initializeApp({ apiKey: "demo-api-key", projectId: $("project").value });
    auth = initializeAuth(app, { persistence: inMemoryPersistence });
    connectAuthEmulator(auth, $("emulator").value, { disableWarnings: true });
  }
  return auth;
}

async function signIn() {
  status("signing in…");
  const email = $("email").value;
  const password = $("password").value;
  let credential;
  try {
    credential = await signInWithEmailAndPassword(firebaseAuth(), email, password);
  } catch (error) {
    if (!["auth/user-not-found", "auth/invalid-credential"].includes(error.code)) throw error;
    credential = await createUserWithEmailAndPassword(firebaseAuth(), email, password);
  }
  // Forced refresh: a clientId claim assigned since the last sign-in is in the new token.
  $("token").value = await credential.user.getIdToken(true);
  status(`signed in as ${credential.user.uid} (assign a tenant: authz users assign ` +
         `${credential.user.uid} acme, then sign in again)`);
}

// Chat Completions with stream: true answers with server-sent events: read them as they
// arrive through the response's ReadableStream and append each delta to the page.
async function ask() {
  status("asking…");
  $("answer").textContent = "";
  const response = await fetch(`${$("relay").value}/api/openai/v1/chat/completions`, {
    method: "POST",
    headers: { authorization: `Bearer ${$("token").value}`, "content-type": "application/json" },
    body: JSON.stringify({
      model: $("model").value, stream: true,
      messages: [{ role: "user", content: $("message").value }],
    }),
  });
  if (!response.ok) {
    // The relay's own errors are JSON too: {"error": "Authentication failed"} and so on.
    status(`error ${response.status}: ${await response.text()}`);
    return;
  }
  status("streaming…");
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        const data = line.startsWith("data:") ? line.slice(5).trim() : null;
        if (!data || data === "[DONE]") continue;
        const delta = JSON.parse(data).choices?.[0]?.delta?.content;
        if (delta) $("answer").textContent += delta;
      }
    }
  }
  status("done");
}

function guarded(action) {
  return () => action().catch((error) => status(`failed: ${error.message}`));
}

$("sign-in").addEventListener("click", guarded(signIn));
$("ask").addEventListener("click", guarded(ask));
status("ready");

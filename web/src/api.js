// The server's ComfyUI-compatible HTTP and WebSocket API. URLs are relative to the page, so the editor also
// works when the server is mounted under a path prefix. A server started with a token is reached by opening
// the editor as /?token=...; every request then carries it (images and the WebSocket cannot send headers).

const token = new URLSearchParams(window.location.search).get("token");

export function withToken(url) {
  if (!token) return url;
  return `${url}${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}`;
}

async function jsonOrThrow(response, what) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON; reported below
  }
  if (!response.ok && !body) throw new Error(`${what} failed: HTTP ${response.status} ${response.statusText}`);
  return { ok: response.ok, status: response.status, body };
}

export async function fetchObjectInfo() {
  const r = await fetch(withToken("object_info"));
  if (!r.ok) throw new Error(`could not read the node list (GET /object_info: HTTP ${r.status})`);
  return r.json();
}

/** POST /prompt. Returns {ok, status, body}; body is {prompt_id, number, node_errors} or {error, node_errors}. */
export async function queuePrompt(prompt, clientId, workflow) {
  const r = await fetch(withToken("prompt"), {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    // Live previews are off on the server unless asked for (as in ComfyUI): this editor shows them.
    body: JSON.stringify({
      client_id: clientId,
      prompt,
      extra_data: { extra_pnginfo: { workflow }, preview_method: "auto" },
    }),
  });
  return jsonOrThrow(r, "queueing the workflow (POST /prompt)");
}

export async function fetchHistory(promptId) {
  const r = await fetch(withToken(`history/${encodeURIComponent(promptId)}`));
  if (!r.ok) return null;
  return r.json();
}

export async function interrupt() {
  await fetch(withToken("interrupt"), { method: "POST" });
}

/** POST /upload/image; returns the name to put in the image widget ("subfolder/name" when in a subfolder). */
export async function uploadImage(file) {
  const form = new FormData();
  form.append("image", file, file.name);
  const r = await fetch(withToken("upload/image"), { method: "POST", body: form });
  if (!r.ok) throw new Error(`uploading ${file.name} failed: HTTP ${r.status}`);
  const body = await r.json();
  return body.subfolder ? `${body.subfolder}/${body.name}` : body.name;
}

export function viewUrl({ filename, subfolder = "", type = "output" }) {
  const q = new URLSearchParams({ filename, subfolder, type });
  return withToken(`view?${q}`);
}

export function newClientId() {
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

/**
 * Opens /ws?clientId=..., reconnecting after a drop. onMessage gets parsed JSON messages; onPreview gets
 * {blob} for binary preview frames (4-byte BE event type 1, 4-byte BE format 1=JPEG 2=PNG, image bytes).
 * Returns a function that closes it for good.
 */
export function connectSocket(clientId, { onMessage, onPreview, onState }) {
  let socket = null;
  let closed = false;
  let timer = null;
  const open = () => {
    const url = new URL(withToken(`ws?clientId=${encodeURIComponent(clientId)}`), window.location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    socket = new WebSocket(url);
    socket.binaryType = "arraybuffer";
    socket.onopen = () => onState(true);
    socket.onclose = (event) => {
      onState(false, event);
      if (!closed) timer = setTimeout(open, 2000);
    };
    socket.onmessage = (event) => {
      if (typeof event.data === "string") {
        try {
          onMessage(JSON.parse(event.data));
        } catch {
          // ignore malformed messages
        }
        return;
      }
      const view = new DataView(event.data);
      if (view.byteLength < 8 || view.getUint32(0) !== 1) return;
      const mime = view.getUint32(4) === 2 ? "image/png" : "image/jpeg";
      onPreview({ blob: new Blob([event.data.slice(8)], { type: mime }) });
    };
  };
  open();
  return () => {
    closed = true;
    clearTimeout(timer);
    socket?.close();
  };
}

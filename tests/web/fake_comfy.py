"""A tiny ComfyUI-compatible server for the editor's browser test (stdlib only, plus Pillow for the PNG).

It serves the built editor, a small /object_info with the default graph's nodes, records every POST /prompt
body, "runs" a valid prompt by sending the WebSocket messages a real server sends (status, execution_start,
executing, progress, a binary preview frame, executed, execution_success) and "produces" a PNG whose text
chunks hold the prompt and workflow, like a real SaveImage.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import mimetypes
import struct
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from PIL import Image
from PIL.PngImagePlugin import PngInfo

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OBJECT_INFO = {
    "CheckpointLoaderSimple": {
        "input": {"required": {"ckpt_name": [["default", "tiny.safetensors"]]}},
        "output": ["MODEL", "CLIP", "VAE"],
        "output_name": ["MODEL", "CLIP", "VAE"],
        "display_name": "Load Checkpoint",
        "category": "loaders",
        "output_node": False,
    },
    "CLIPTextEncode": {
        "input": {"required": {"text": ["STRING", {"multiline": True}], "clip": ["CLIP"]}},
        "output": ["CONDITIONING"],
        "output_name": ["CONDITIONING"],
        "display_name": "CLIP Text Encode (Prompt)",
        "category": "conditioning",
        "output_node": False,
    },
    "EmptyLatentImage": {
        "input": {
            "required": {
                "width": ["INT", {"default": 64, "min": 16, "max": 4096, "step": 8}],
                "height": ["INT", {"default": 64, "min": 16, "max": 4096, "step": 8}],
                "batch_size": ["INT", {"default": 1, "min": 1, "max": 64}],
            }
        },
        "output": ["LATENT"],
        "output_name": ["LATENT"],
        "display_name": "Empty Latent Image",
        "category": "latent",
        "output_node": False,
    },
    "KSampler": {
        "input": {
            "required": {
                "model": ["MODEL"],
                "seed": ["INT", {"default": 0, "min": 0, "max": 2**64 - 1}],
                "steps": ["INT", {"default": 20, "min": 1, "max": 10000}],
                "cfg": ["FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}],
                "sampler_name": [["euler", "heun", "dpmpp_2m"]],
                "scheduler": [["normal", "karras"]],
                "positive": ["CONDITIONING"],
                "negative": ["CONDITIONING"],
                "latent_image": ["LATENT"],
                "denoise": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}],
            }
        },
        "output": ["LATENT"],
        "output_name": ["LATENT"],
        "display_name": "KSampler",
        "category": "sampling",
        "output_node": False,
    },
    "VAEDecode": {
        "input": {"required": {"samples": ["LATENT"], "vae": ["VAE"]}},
        "output": ["IMAGE"],
        "output_name": ["IMAGE"],
        "display_name": "VAE Decode",
        "category": "latent",
        "output_node": False,
    },
    "SaveImage": {
        "input": {"required": {"images": ["IMAGE"], "filename_prefix": ["STRING", {"default": "ComfyUI"}]}},
        "output": [],
        "output_name": [],
        "display_name": "Save Image",
        "category": "image",
        "output_node": True,
    },
    "ImageInvert": {
        "input": {"required": {"image": ["IMAGE"]}},
        "output": ["IMAGE"],
        "output_name": ["IMAGE"],
        "display_name": "Invert Image",
        "category": "image/postprocessing",
        "output_node": False,
    },
}

FORBIDDEN_WORD = "forbidden"  # a CLIPTextEncode text containing it is refused with node_errors


def png_bytes(color: tuple[int, int, int], text: dict[str, str] | None = None) -> bytes:
    """A 64x64 PNG; "workflow" goes in a compressed iTXt chunk, other keys in tEXt (both kinds must parse)."""
    info = PngInfo()
    for key, value in (text or {}).items():
        if key == "workflow":
            info.add_itxt(key, value, zip=True)
        else:
            info.add_text(key, value)
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), color).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


class WebSocketClient:
    def __init__(self, sock, client_id: str):
        self.sock = sock
        self.client_id = client_id
        self.lock = threading.Lock()

    def send(self, payload: bytes, opcode: int) -> None:
        n = len(payload)
        if n < 126:
            header = struct.pack("!BB", 0x80 | opcode, n)
        elif n < 65536:
            header = struct.pack("!BBH", 0x80 | opcode, 126, n)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 127, n)
        with self.lock:
            try:
                self.sock.sendall(header + payload)
            except OSError:
                pass

    def send_json(self, message: dict) -> None:
        self.send(json.dumps(message).encode(), 0x1)


class FakeComfyServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, static_dir: Path):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.static_dir = static_dir
        self.prompts: list[dict] = []  # every POST /prompt body, in order
        self.ws_client_ids: list[str] = []
        self.clients: list[WebSocketClient] = []
        self.files: dict[str, bytes] = {}
        self.history: dict[str, dict] = {}
        self.counter = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"

    def broadcast(self, client_id: str, message: dict | bytes) -> None:
        for client in list(self.clients):
            if client.client_id == client_id:
                if isinstance(message, bytes):
                    client.send(message, 0x2)
                else:
                    client.send_json(message)

    def run_prompt(self, prompt_id: str, body: dict) -> None:
        prompt, client_id = body["prompt"], body.get("client_id", "")
        send = lambda t, d: self.broadcast(client_id, {"type": t, "data": d})  # noqa: E731
        time.sleep(0.1)
        send("execution_start", {"prompt_id": prompt_id})
        outputs = {}
        for node_id, node in prompt.items():
            send("executing", {"node": node_id, "prompt_id": prompt_id})
            if node["class_type"] == "KSampler":
                steps = 3
                for i in range(1, steps + 1):
                    send("progress", {"value": i, "max": steps, "node": node_id, "prompt_id": prompt_id})
                    time.sleep(0.05)
                self.broadcast(client_id, struct.pack(">II", 1, 2) + png_bytes((40, 40, 200)))
                time.sleep(0.3)
            if node["class_type"] == "SaveImage":
                self.counter += 1
                filename = f"{node['inputs']['filename_prefix']}_{self.counter:05d}_.png"
                workflow = body.get("extra_data", {}).get("extra_pnginfo", {}).get("workflow")
                text = {"prompt": json.dumps(prompt)}
                if workflow is not None:
                    text["workflow"] = json.dumps(workflow)
                self.files[filename] = png_bytes((200, 30, 30), text)
                images = [{"filename": filename, "subfolder": "", "type": "output"}]
                outputs[node_id] = {"images": images}
                send("executed", {"node": node_id, "output": {"images": images}, "prompt_id": prompt_id})
        self.history[prompt_id] = {"prompt": [0, prompt_id, prompt, {}, list(outputs)], "outputs": outputs}
        send("executing", {"node": None, "prompt_id": prompt_id})
        send("execution_success", {"prompt_id": prompt_id})


class _Handler(BaseHTTPRequestHandler):
    server: FakeComfyServer

    def log_message(self, *args) -> None:  # keep pytest output quiet
        pass

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def do_GET(self) -> None:
        url = urlparse(self.path)
        path = url.path
        if path == "/ws" and self.headers.get("Upgrade", "").lower() == "websocket":
            return self._websocket(parse_qs(url.query).get("clientId", [""])[0])
        if path == "/object_info":
            return self._json(200, OBJECT_INFO)
        if path.startswith("/history/"):
            prompt_id = path.split("/", 2)[2]
            return self._json(
                200, {prompt_id: self.server.history[prompt_id]} if prompt_id in self.server.history else {}
            )
        if path == "/queue":
            return self._json(200, {"queue_running": [], "queue_pending": []})
        if (
            path == "/latentworks/defaults"
        ):  # the default model's native size (the real server reads model.json)
            return self._json(200, {"width": 40, "height": 48})
        if path == "/view":
            name = parse_qs(url.query).get("filename", [""])[0]
            if name in self.server.files:
                return self._send(200, self.server.files[name], "image/png")
            return self._send(404, b"no such file", "text/plain")
        file = (self.server.static_dir / ("index.html" if path == "/" else path.lstrip("/"))).resolve()
        if self.server.static_dir.resolve() in file.parents and file.is_file():
            mime = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
            return self._send(200, file.read_bytes(), mime)
        self._send(404, b"not found", "text/plain")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/interrupt":
            return self._json(200, {})
        if self.path != "/prompt":
            return self._send(404, b"not found", "text/plain")
        data = json.loads(body)
        self.server.prompts.append(data)
        node_errors = {}
        for node_id, node in data["prompt"].items():
            text = node["inputs"].get("text")
            if node["class_type"] == "CLIPTextEncode" and isinstance(text, str) and FORBIDDEN_WORD in text:
                node_errors[node_id] = {
                    "errors": [
                        {
                            "type": "value_not_allowed",
                            "message": "Value not allowed",
                            "details": f"text: the word '{FORBIDDEN_WORD}' is not allowed",
                            "extra_info": {"input_name": "text"},
                        }
                    ],
                    "dependent_outputs": [],
                    "class_type": node["class_type"],
                }
        if node_errors:
            error = {
                "type": "prompt_outputs_failed_validation",
                "message": "Prompt outputs failed validation",
                "details": "",
            }
            return self._json(400, {"error": error, "node_errors": node_errors})
        prompt_id = str(uuid.uuid4())
        self._json(200, {"prompt_id": prompt_id, "number": len(self.server.prompts), "node_errors": {}})
        threading.Thread(target=self.server.run_prompt, args=(prompt_id, data), daemon=True).start()

    def _websocket(self, client_id: str) -> None:
        accept = base64.b64encode(
            hashlib.sha1((self.headers["Sec-WebSocket-Key"] + WS_GUID).encode()).digest()
        )
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept.decode())
        self.end_headers()
        self.wfile.flush()
        client = WebSocketClient(self.connection, client_id)
        self.server.ws_client_ids.append(client_id)
        self.server.clients.append(client)
        client.send_json(
            {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": client_id}}
        )
        try:
            while True:  # read (and drop) client frames until it closes
                head = self.rfile.read(2)
                if len(head) < 2:
                    break
                opcode, length = head[0] & 0x0F, head[1] & 0x7F
                if length == 126:
                    length = struct.unpack("!H", self.rfile.read(2))[0]
                elif length == 127:
                    length = struct.unpack("!Q", self.rfile.read(8))[0]
                self.rfile.read((4 if head[1] & 0x80 else 0) + length)
                if opcode == 0x8:
                    break
        finally:
            self.server.clients.remove(client)
        self.close_connection = True

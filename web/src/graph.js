// The editor's graph model and its conversions, independent of the drawing library.
//
// Graph: {nodes: [{id, classType, position: {x, y}, widgets: {name: value}}],
//         links: [{source, sourceSlot, target, targetInput}]}
// Node ids are strings of integers ("1", "2", ...), as ComfyUI's API format uses them.

import { convertWorkflow } from "./api.js";
import { coerceNumber, missingNodeDef } from "./schema.js";

export const WORKFLOW_FORMAT = "latentworks-workflow";
export const WORKFLOW_VERSION = 1;

/** Widget values for a node: schema defaults overridden by `given` (unknown names are kept, for missing nodes). */
export function widgetValues(def, given = {}) {
  const values = {};
  for (const w of def.widgets) {
    let v = w.name in given ? given[w.name] : w.default;
    if (w.kind === "INT" || w.kind === "FLOAT") v = coerceNumber(w, v);
    values[w.name] = v;
  }
  return values;
}

/** Definition for a class, or a "missing" one drawn from what we know. */
export function defFor(defs, classType, saved) {
  return defs[classType] || missingNodeDef(classType, saved);
}

export function nextNodeId(graph) {
  let max = 0;
  for (const n of graph.nodes) max = Math.max(max, Number.parseInt(n.id, 10) || 0);
  return String(max + 1);
}

/** {width, height} when both are positive integers, else {} (the node's own defaults). */
function latentSize(size) {
  const ok = (v) => Number.isInteger(v) && v > 0;
  return ok(size?.width) && ok(size?.height) ? { width: size.width, height: size.height } : {};
}

/** The text-to-image graph the editor opens on; size ({width, height}) is the default model's native size. */
export function defaultGraph(defs, size = {}) {
  const spec = [
    ["1", "CheckpointLoaderSimple", [40, 250], { ckpt_name: "default" }],
    ["2", "CLIPTextEncode", [400, 40], { text: "a red apple, google style" }],
    ["3", "CLIPTextEncode", [400, 300], { text: "" }],
    ["4", "EmptyLatentImage", [400, 560], latentSize(size)],
    ["5", "KSampler", [760, 150], { steps: 20, cfg: 5, sampler_name: "euler", scheduler: "normal", denoise: 1 }],
    ["6", "VAEDecode", [1120, 150], {}],
    ["7", "SaveImage", [1450, 150], { filename_prefix: "latentworks" }],
  ];
  const nodes = spec.map(([id, classType, [x, y], given]) => ({
    id,
    classType,
    position: { x, y },
    widgets: widgetValues(defFor(defs, classType), given),
  }));
  const L = (source, sourceSlot, target, targetInput) => ({ source, sourceSlot, target, targetInput });
  const links = [
    L("1", 0, "5", "model"),
    L("1", 1, "2", "clip"),
    L("1", 1, "3", "clip"),
    L("2", 0, "5", "positive"),
    L("3", 0, "5", "negative"),
    L("4", 0, "5", "latent_image"),
    L("5", 0, "6", "samples"),
    L("1", 2, "6", "vae"),
    L("6", 0, "7", "images"),
  ];
  return { nodes, links };
}

/**
 * ComfyUI's API format: {id: {class_type, inputs: {name: value | [sourceId, outputIndex]}, _meta: {title}}}.
 * Returns {prompt, problems}; problems lists [nodeId, message] for nodes the server cannot run
 * (their class is missing), which the caller shows on the nodes instead of queueing.
 */
export function toApiPrompt(graph, defs) {
  const prompt = {};
  const problems = [];
  for (const node of graph.nodes) {
    const def = defs[node.classType];
    if (!def) {
      problems.push([node.id, `node type "${node.classType}" is not available on this server; remove or replace it`]);
      continue;
    }
    const inputs = {};
    for (const w of def.widgets) if (w.name in node.widgets) inputs[w.name] = node.widgets[w.name];
    for (const link of graph.links) {
      if (link.target === node.id) inputs[link.targetInput] = [link.source, link.sourceSlot];
    }
    prompt[node.id] = { class_type: node.classType, inputs, _meta: { title: def.title } };
  }
  return { prompt, problems };
}

/** The JSON the editor saves and embeds in PNGs (extra_pnginfo.workflow). */
export function toWorkflow(graph) {
  return {
    format: WORKFLOW_FORMAT,
    version: WORKFLOW_VERSION,
    nodes: graph.nodes.map((n) => ({
      id: n.id,
      class_type: n.classType,
      position: [Math.round(n.position.x), Math.round(n.position.y)],
      widgets: { ...n.widgets },
    })),
    links: graph.links.map((l) => [l.source, l.sourceSlot, l.target, l.targetInput]),
  };
}

function fromOurWorkflow(json, defs) {
  const links = (json.links || []).map(([source, sourceSlot, target, targetInput]) => ({
    source: String(source),
    sourceSlot: Number(sourceSlot),
    target: String(target),
    targetInput: String(targetInput),
  }));
  const nodes = (json.nodes || []).map((n) => {
    const id = String(n.id);
    const saved = {
      widgets: n.widgets,
      inputs: links.filter((l) => l.target === id).map((l) => l.targetInput),
      outputs: 1 + Math.max(-1, ...links.filter((l) => l.source === id).map((l) => l.sourceSlot)),
    };
    const def = defFor(defs, n.class_type, saved);
    const [x, y] = Array.isArray(n.position) ? n.position : [0, 0];
    return { id, classType: n.class_type, position: { x, y }, widgets: widgetValues(def, n.widgets || {}) };
  });
  return { nodes, links };
}

/** [x, y] of a litegraph node's `pos` (an array or {0: x, 1: y}), or null. */
function uiPosition(pos) {
  const x = Number(pos?.[0]);
  const y = Number(pos?.[1]);
  return Number.isFinite(x) && Number.isFinite(y) ? { x, y } : null;
}

/** positions: {nodeId: {x, y}} to keep (from a UI workflow); other nodes are laid out by depth. */
function fromApiPrompt(prompt, defs, positions = {}) {
  const ids = Object.keys(prompt);
  const links = [];
  for (const id of ids) {
    for (const [name, v] of Object.entries(prompt[id].inputs || {})) {
      if (Array.isArray(v) && v.length === 2 && String(v[0]) in prompt) {
        links.push({ source: String(v[0]), sourceSlot: Number(v[1]), target: id, targetInput: name });
      }
    }
  }
  // Lay out by depth: a node's column is one more than its deepest source.
  const depth = {};
  const depthOf = (id, seen = new Set()) => {
    if (id in depth) return depth[id];
    if (seen.has(id)) return 0;
    seen.add(id);
    const d = Math.max(-1, ...links.filter((l) => l.target === id).map((l) => depthOf(l.source, seen))) + 1;
    depth[id] = d;
    return d;
  };
  const rows = {};
  // Laid-out nodes go below the kept ones, so they do not overlap.
  const kept = Object.values(positions);
  const top = kept.length ? Math.max(...kept.map((p) => p.y)) + 400 : 40;
  const nodes = ids.map((id) => {
    let position = positions[id];
    if (!position) {
      const col = depthOf(id);
      const row = (rows[col] = (rows[col] ?? -1) + 1);
      position = { x: 40 + col * 360, y: top + row * 300 };
    }
    const given = {};
    for (const [name, v] of Object.entries(prompt[id].inputs || {})) if (!Array.isArray(v)) given[name] = v;
    const saved = {
      widgets: given,
      inputs: links.filter((l) => l.target === id).map((l) => l.targetInput),
      outputs: 1 + Math.max(-1, ...links.filter((l) => l.source === id).map((l) => l.sourceSlot)),
    };
    const classType = prompt[id].class_type;
    return {
      id: String(id),
      classType,
      position,
      widgets: widgetValues(defFor(defs, classType, saved), given),
    };
  });
  return { nodes, links };
}

function isApiPrompt(json) {
  const values = Object.values(json || {});
  return values.length > 0 && values.every((v) => v && typeof v === "object" && typeof v.class_type === "string");
}

/**
 * A ComfyUI UI-format workflow, converted by the server (POST /workflow/convert: widget values, seeds'
 * control_after_generate, PrimitiveNode, Reroute, notes, bypassed/muted nodes and subgraphs), then drawn
 * with the node positions the workflow holds.
 */
async function fromComfyUiWorkflow(json, defs) {
  const prompt = await convertWorkflow(json);
  const positions = {};
  for (const n of json.nodes) {
    const p = uiPosition(n?.pos);
    if (p && String(n.id) in prompt) positions[String(n.id)] = p;
  }
  return fromApiPrompt(prompt, defs, positions);
}

/**
 * Reads a saved workflow (ours or ComfyUI's UI format, which the server converts) or an API-format prompt;
 * throws an Error saying what it got or why the server refused it.
 */
export async function graphFromJson(json, defs) {
  if (json && json.format === WORKFLOW_FORMAT) return fromOurWorkflow(json, defs);
  if (json && Array.isArray(json.nodes) && Array.isArray(json.links)) return fromComfyUiWorkflow(json, defs);
  if (json && json.prompt && isApiPrompt(json.prompt)) return fromApiPrompt(json.prompt, defs);
  if (isApiPrompt(json)) return fromApiPrompt(json, defs);
  throw new Error(
    "this JSON is not a workflow: expected a latentworks workflow, a ComfyUI workflow (nodes + links) " +
      "or an API-format prompt ({id: {class_type, inputs}})",
  );
}

/**
 * Text chunks of a PNG (tEXt, zTXt and iTXt, compressed ones inflated) as {keyword: text}.
 * Throws if the bytes are not a PNG.
 */
export async function pngTextChunks(buffer) {
  const bytes = new Uint8Array(buffer);
  const sig = [137, 80, 78, 71, 13, 10, 26, 10];
  if (bytes.length < 8 || sig.some((b, i) => bytes[i] !== b)) throw new Error("not a PNG file (bad signature)");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const latin1 = new TextDecoder("latin1");
  const utf8 = new TextDecoder("utf-8");
  const inflate = async (data) => {
    const stream = new Blob([data]).stream().pipeThrough(new DecompressionStream("deflate"));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  };
  const out = {};
  let pos = 8;
  while (pos + 8 <= bytes.length) {
    const length = view.getUint32(pos);
    const type = latin1.decode(bytes.subarray(pos + 4, pos + 8));
    const data = bytes.subarray(pos + 8, pos + 8 + length);
    pos += 12 + length;
    if (type === "IEND") break;
    if (type !== "tEXt" && type !== "zTXt" && type !== "iTXt") continue;
    const nul = data.indexOf(0);
    if (nul < 0) continue;
    const key = latin1.decode(data.subarray(0, nul));
    if (type === "tEXt") {
      out[key] = latin1.decode(data.subarray(nul + 1));
    } else if (type === "zTXt") {
      out[key] = latin1.decode(await inflate(data.subarray(nul + 2)));
    } else {
      const compressed = data[nul + 1] === 1;
      let p = nul + 3;
      p = data.indexOf(0, p) + 1; // language tag
      p = data.indexOf(0, p) + 1; // translated keyword
      const text = data.subarray(p);
      out[key] = utf8.decode(compressed ? await inflate(text) : text);
    }
  }
  return out;
}

/** A graph from a PNG's "workflow" chunk, else its "prompt" chunk; throws if neither holds one. */
export async function graphFromPng(buffer, defs) {
  const chunks = await pngTextChunks(buffer);
  let firstError = null;
  for (const key of ["workflow", "prompt"]) {
    if (!(key in chunks)) continue;
    try {
      return await graphFromJson(JSON.parse(chunks[key]), defs);
    } catch (err) {
      firstError ??= err; // try the next chunk; report the first failure if none works
    }
  }
  if (firstError) throw firstError;
  const keys = Object.keys(chunks);
  throw new Error(
    `this PNG holds no workflow: expected a "workflow" or "prompt" text chunk with a graph, found ${
      keys.length ? keys.map((k) => `"${k}"`).join(", ") : "no text chunks"
    }`,
  );
}

// The editor: node menu, canvas, toolbar, results; queueing, live progress and undo.
import {
  Background,
  Controls,
  ReactFlow,
  ReactFlowProvider,
  applyEdgeChanges,
  applyNodeChanges,
  useReactFlow,
} from "@xyflow/react";
import { useCallback, useEffect, useMemo, useRef, useState } from "react";
import { connectSocket, fetchDefaults, fetchHistory, fetchObjectInfo, interrupt, newClientId, queuePrompt, uploadImage, viewUrl } from "./api.js";
import {
  defFor as defForGraph,
  defaultGraph,
  graphFromJson,
  graphFromPng,
  nextNodeId,
  toApiPrompt,
  toWorkflow,
  widgetValues,
} from "./graph.js";
import NodeView, { EditorContext, typeColor } from "./NodeView.jsx";
import { nodeDefsFromObjectInfo, typesMatch } from "./schema.js";

const nodeTypes = { lw: NodeView };
const UNDO_LIMIT = 100;

function edgeFor(link, defs, classOf) {
  const def = defForGraph(defs, classOf(link.source));
  const type = def.outputs[link.sourceSlot]?.type ?? "*";
  return {
    id: `${link.source}:${link.sourceSlot}->${link.target}:${link.targetInput}`,
    source: link.source,
    sourceHandle: `o${link.sourceSlot}`,
    target: link.target,
    targetHandle: `i:${link.targetInput}`,
    data: { type },
    style: { stroke: typeColor(type), strokeWidth: 2 },
  };
}

function graphToFlow(graph, defs) {
  const classes = new Map(graph.nodes.map((n) => [n.id, n.classType]));
  const nodes = graph.nodes.map((n) => ({
    id: n.id,
    type: "lw",
    position: { ...n.position },
    data: { classType: n.classType, widgets: { ...n.widgets } },
  }));
  const edges = graph.links.filter((l) => classes.has(l.source) && classes.has(l.target)).map((l) => edgeFor(l, defs, (id) => classes.get(id)));
  return { nodes, edges };
}

function flowToGraph(nodes, edges) {
  return {
    nodes: nodes.map((n) => ({ id: n.id, classType: n.data.classType, position: { ...n.position }, widgets: { ...n.data.widgets } })),
    links: edges.map((e) => ({
      source: e.source,
      sourceSlot: Number(e.sourceHandle.slice(1)),
      target: e.target,
      targetInput: e.targetHandle.slice(2),
    })),
  };
}

function download(filename, blob) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = filename;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

function NodeMenu({ defs, onAdd }) {
  const [query, setQuery] = useState("");
  const tree = useMemo(() => {
    const q = query.trim().toLowerCase();
    const root = { children: {}, items: [] };
    for (const def of Object.values(defs)) {
      const hay = `${def.title} ${def.classType} ${def.category}`.toLowerCase();
      if (q && !hay.includes(q)) continue;
      let at = root;
      for (const part of def.category.split("/")) at = at.children[part] ??= { children: {}, items: [] };
      at.items.push(def);
    }
    return root;
  }, [defs, query]);
  const render = (branch, path) =>
    Object.entries(branch.children)
      .sort(([a], [b]) => a.localeCompare(b))
      .map(([name, sub]) => (
        <details key={path + name} open={Boolean(query)} className="lw-category" data-category={path + name}>
          <summary>{name}</summary>
          {render(sub, `${path}${name}/`)}
          {sub.items
            .sort((a, b) => a.title.localeCompare(b.title))
            .map((def) => (
              <button key={def.classType} type="button" className="lw-menu-item" data-class={def.classType} title={def.description || def.classType} onClick={() => onAdd(def.classType)}>
                {def.title}
              </button>
            ))}
        </details>
      ));
  return (
    <aside className="lw-menu">
      <input className="lw-search" placeholder="search nodes…" value={query} onChange={(e) => setQuery(e.target.value)} />
      <div className="lw-menu-list">{render(tree, "")}</div>
    </aside>
  );
}

function Editor() {
  const rf = useReactFlow();
  const [defs, setDefs] = useState(null);
  const modelSize = useRef({}); // {width, height} of the server's default model, for the default graph
  const [nodes, setNodes] = useState([]);
  const [edges, setEdges] = useState([]);
  const [banner, setBanner] = useState(null); // {kind: "error"|"info", text}
  const [status, setStatus] = useState("connecting…");
  const [connected, setConnected] = useState(false);
  const [queueRemaining, setQueueRemaining] = useState(0);
  const [results, setResults] = useState([]); // [{url, filename, promptId}]
  const [preview, setPreview] = useState(null);
  const [busy, setBusy] = useState(false);
  const clientId = useRef(newClientId());
  const undoStack = useRef([]);
  const redoStack = useRef([]);
  const lastEdit = useRef({ key: null, at: 0 });
  const fileInput = useRef(null);
  const state = useRef({});
  state.current = { nodes, edges, defs };
  const activePrompt = useRef(null);
  const events = useRef([]);

  const defFor = useCallback((classType) => defForGraph(defs || {}, classType), [defs]);

  // ---- graph replacement and undo -------------------------------------------------------------------
  const setGraph = useCallback((graph, defsNow) => {
    const flow = graphToFlow(graph, defsNow);
    setNodes(flow.nodes);
    setEdges(flow.edges);
    const missing = [...new Set(graph.nodes.filter((n) => !defsNow[n.classType]).map((n) => n.classType))];
    if (missing.length) {
      setBanner({ kind: "error", text: `not on this server: ${missing.join(", ")} (marked in red; remove or replace them to queue)` });
    }
  }, []);

  const snapshot = useCallback((key = null) => {
    const now = Date.now();
    if (key && lastEdit.current.key === key && now - lastEdit.current.at < 1500) {
      lastEdit.current.at = now;
      return; // typing into one widget: one undo step
    }
    lastEdit.current = { key, at: now };
    const { nodes: n, edges: e } = state.current;
    undoStack.current.push(flowToGraph(n, e));
    if (undoStack.current.length > UNDO_LIMIT) undoStack.current.shift();
    redoStack.current = [];
  }, []);

  const restore = useCallback((from, to) => {
    const graph = from.current.pop();
    if (!graph) return;
    const { nodes: n, edges: e, defs: d } = state.current;
    to.current.push(flowToGraph(n, e));
    lastEdit.current = { key: null, at: 0 };
    const flow = graphToFlow(graph, d || {});
    const runtime = new Map(n.map((x) => [x.id, x.data]));
    setNodes(flow.nodes.map((x) => ({ ...x, data: { ...runtime.get(x.id), ...x.data } })));
    setEdges(flow.edges);
  }, []);
  const undo = useCallback(() => restore(undoStack, redoStack), [restore]);
  const redo = useCallback(() => restore(redoStack, undoStack), [restore]);

  // ---- loading ---------------------------------------------------------------------------------------
  useEffect(() => {
    let cancelled = false;
    const defsPromise = fetchObjectInfo()
      .then((info) => nodeDefsFromObjectInfo(info))
      .catch((err) => {
        setBanner({ kind: "error", text: `${err.message}; showing the default graph without a server` });
        return {};
      });
    Promise.all([defsPromise, fetchDefaults()])
      .then(([d, size]) => {
        if (cancelled) return;
        modelSize.current = size;
        setDefs(d);
        setGraph(defaultGraph(d, size), d);
        setTimeout(() => rf.fitView({ padding: 0.1 }), 50);
      });
    return () => {
      cancelled = true;
    };
  }, [rf, setGraph]);

  const loadFile = useCallback(
    async (file) => {
      const d = state.current.defs || {};
      try {
        const buffer = await file.arrayBuffer();
        const head = new Uint8Array(buffer.slice(0, 4));
        const isPng = head[0] === 0x89 && head[1] === 0x50 && head[2] === 0x4e && head[3] === 0x47;
        const graph = isPng ? await graphFromPng(buffer, d) : await graphFromJson(JSON.parse(new TextDecoder().decode(buffer)), d);
        snapshot();
        setBanner(null);
        setGraph(graph, d);
        setStatus(`loaded ${file.name}`);
        setTimeout(() => rf.fitView({ padding: 0.1 }), 50);
      } catch (err) {
        setBanner({ kind: "error", text: `could not load ${file.name}: ${err.message}` });
      }
    },
    [rf, setGraph, snapshot],
  );

  // ---- editing -----------------------------------------------------------------------------------------
  const setWidget = useCallback(
    (nodeId, name, value) => {
      snapshot(`${nodeId}.${name}`);
      setNodes((ns) =>
        ns.map((n) => {
          if (n.id !== nodeId) return n;
          const errors = (n.data.errors || []).filter((e) => e.input !== name);
          return { ...n, data: { ...n.data, widgets: { ...n.data.widgets, [name]: value }, errors } };
        }),
      );
    },
    [snapshot],
  );

  const upload = useCallback(
    async (nodeId, name, file) => {
      try {
        const value = await uploadImage(file);
        const def = state.current.defs?.[state.current.nodes.find((n) => n.id === nodeId)?.data.classType];
        const w = def?.widgets.find((x) => x.name === name);
        if (w && !w.choices.includes(value)) w.choices.push(value);
        setWidget(nodeId, name, value);
      } catch (err) {
        setBanner({ kind: "error", text: err.message });
      }
    },
    [setWidget],
  );

  const addNode = useCallback(
    (classType) => {
      const d = state.current.defs || {};
      const graph = flowToGraph(state.current.nodes, state.current.edges);
      const id = nextNodeId(graph);
      const box = document.querySelector(".lw-canvas")?.getBoundingClientRect();
      const center = box ? rf.screenToFlowPosition({ x: box.left + box.width / 2, y: box.top + box.height / 2 }) : { x: 0, y: 0 };
      const offset = (graph.nodes.length % 5) * 24;
      snapshot();
      setNodes((ns) => [
        ...ns.map((n) => (n.selected ? { ...n, selected: false } : n)),
        {
          id,
          type: "lw",
          selected: true,
          position: { x: center.x - 150 + offset, y: center.y - 100 + offset },
          data: { classType, widgets: widgetValues(defForGraph(d, classType)) },
        },
      ]);
    },
    [rf, snapshot],
  );

  const onNodesChange = useCallback((changes) => setNodes((ns) => applyNodeChanges(changes, ns)), []);
  const onEdgesChange = useCallback((changes) => setEdges((es) => applyEdgeChanges(changes, es)), []);
  const onBeforeDelete = useCallback(async () => {
    snapshot();
    return true;
  }, [snapshot]);
  const onNodeDragStart = useCallback(() => snapshot(), [snapshot]);

  const socketTypes = useCallback(
    (c) => {
      const { nodes: ns } = state.current;
      const classOf = (id) => ns.find((n) => n.id === id)?.data.classType;
      const src = defFor(classOf(c.source));
      const dst = defFor(classOf(c.target));
      const out = src.outputs[Number(String(c.sourceHandle).slice(1))];
      const input = dst.inputs.find((i) => `i:${i.name}` === c.targetHandle);
      return [out?.type, input?.type];
    },
    [defFor],
  );

  const isValidConnection = useCallback(
    (c) => {
      if (c.source === c.target) return false;
      const [outType, inType] = socketTypes(c);
      return Boolean(outType && inType && typesMatch(outType, inType));
    },
    [socketTypes],
  );

  const onConnect = useCallback(
    (c) => {
      if (!isValidConnection(c)) return;
      snapshot();
      const link = { source: c.source, sourceSlot: Number(c.sourceHandle.slice(1)), target: c.target, targetInput: c.targetHandle.slice(2) };
      const classes = new Map(state.current.nodes.map((n) => [n.id, n.data.classType]));
      const edge = edgeFor(link, state.current.defs || {}, (id) => classes.get(id));
      // An input takes one link: a new one replaces the old.
      setEdges((es) => [...es.filter((e) => !(e.target === c.target && e.targetHandle === c.targetHandle)), edge]);
      setNodes((ns) =>
        ns.map((n) => (n.id === c.target && n.data.errors?.length ? { ...n, data: { ...n.data, errors: n.data.errors.filter((e) => e.input !== link.targetInput) } } : n)),
      );
    },
    [isValidConnection, snapshot],
  );

  // ---- running -----------------------------------------------------------------------------------------
  const patchNode = useCallback((id, patch) => {
    setNodes((ns) => ns.map((n) => (n.id === String(id) ? { ...n, data: { ...n.data, ...patch(n.data) } } : n)));
  }, []);

  const addImages = useCallback(
    (nodeId, images, promptId) => {
      const items = (images || []).map((img) => ({ url: viewUrl(img), filename: img.filename, promptId, nodeId: String(nodeId) }));
      if (!items.length) return;
      setResults((rs) => [...items.filter((i) => !rs.some((r) => r.url === i.url)).reverse(), ...rs]);
      patchNode(nodeId, () => ({ images: items, preview: null }));
      setPreview(null);
    },
    [patchNode],
  );

  const finish = useCallback(
    async (promptId, text) => {
      setBusy(false);
      setStatus(text);
      setNodes((ns) => ns.map((n) => (n.data.running || n.data.progress || n.data.preview ? { ...n, data: { ...n.data, running: false, progress: null, preview: null } } : n)));
      // The history has every output even when a WebSocket message was missed.
      const history = promptId ? await fetchHistory(promptId).catch(() => null) : null;
      const entry = history?.[promptId];
      for (const [nodeId, output] of Object.entries(entry?.outputs || {})) addImages(nodeId, output.images, promptId);
    },
    [addImages],
  );

  const onMessage = useCallback(
    (msg) => {
      const { type, data = {} } = msg;
      events.current.push(type);
      if (type === "status") {
        setQueueRemaining(data.status?.exec_info?.queue_remaining ?? 0);
        if (data.sid) clientId.current = data.sid;
      } else if (type === "execution_start") {
        activePrompt.current = data.prompt_id;
        setStatus("running…");
      } else if (type === "executing") {
        setNodes((ns) =>
          ns.map((n) => {
            const running = data.node != null && n.id === String(data.node);
            return n.data.running === running && !(n.data.progress && !running) ? n : { ...n, data: { ...n.data, running, progress: running ? n.data.progress : null } };
          }),
        );
        if (data.node == null) finish(data.prompt_id, "done");
        else setStatus(`running ${data.node}…`);
      } else if (type === "progress") {
        const node = data.node ?? state.current.nodes.find((n) => n.data.running)?.id;
        if (node != null) patchNode(node, () => ({ progress: { value: data.value, max: data.max } }));
        setStatus(`step ${data.value}/${data.max}`);
      } else if (type === "executed") {
        addImages(data.node, data.output?.images, data.prompt_id);
      } else if (type === "execution_error") {
        const text = `${data.exception_type ? `${data.exception_type}: ` : ""}${data.exception_message || "failed"}`;
        if (data.node_id != null) patchNode(data.node_id, () => ({ errors: [{ text }] }));
        setBanner({ kind: "error", text: `node ${data.node_id ?? "?"} (${data.node_type ?? ""}) failed: ${text}` });
        finish(data.prompt_id, "failed");
      } else if (type === "execution_interrupted") {
        finish(data.prompt_id, "interrupted");
      } else if (type === "execution_success") {
        setStatus("done");
      }
    },
    [addImages, finish, patchNode],
  );

  const onPreview = useCallback(({ blob }) => {
    const url = URL.createObjectURL(blob);
    events.current.push("preview");
    setPreview((old) => {
      if (old) URL.revokeObjectURL(old);
      return url;
    });
    setNodes((ns) => ns.map((n) => (n.data.running ? { ...n, data: { ...n.data, preview: url } } : n)));
  }, []);

  useEffect(() => {
    const onState = (open, event) => {
      events.current.push(open ? "ws-open" : `ws-closed ${event?.code ?? ""}`);
      setConnected(open);
    };
    return connectSocket(clientId.current, { onMessage, onPreview, onState });
  }, [onMessage, onPreview]);

  const showNodeErrors = useCallback((nodeErrors) => {
    const byNode = {};
    for (const [id, entry] of Object.entries(nodeErrors || {})) {
      byNode[id] = (entry.errors || []).map((e) => ({
        input: e.extra_info?.input_name,
        text: `${e.message}${e.details ? `: ${e.details}` : ""}`,
      }));
    }
    setNodes((ns) => ns.map((n) => ({ ...n, data: { ...n.data, errors: byNode[n.id] || [] } })));
    return Object.keys(byNode).length;
  }, []);

  const queue = useCallback(async () => {
    const { nodes: ns, edges: es, defs: d } = state.current;
    const graph = flowToGraph(ns, es);
    const { prompt, problems } = toApiPrompt(graph, d || {});
    if (problems.length) {
      showNodeErrors(Object.fromEntries(problems.map(([id, message]) => [id, { errors: [{ message }] }])));
      setBanner({ kind: "error", text: `cannot queue: ${problems.map(([id, m]) => `node ${id}: ${m}`).join("; ")}` });
      return;
    }
    setBanner(null);
    showNodeErrors({});
    try {
      const { ok, body } = await queuePrompt(prompt, clientId.current, toWorkflow(graph));
      const count = showNodeErrors(body?.node_errors);
      if (!ok) {
        const err = body?.error || {};
        const msg = typeof err === "string" ? err : `${err.message || "the server refused the workflow"}${err.details ? `: ${err.details}` : ""}`;
        setBanner({ kind: "error", text: `${msg}${count ? ` (${count} node${count > 1 ? "s" : ""} marked)` : ""}` });
        setStatus("refused");
        return;
      }
      activePrompt.current = body.prompt_id;
      window.latentworksEditor.lastPromptId = body.prompt_id;
      setBusy(true);
      setStatus(`queued ${body.prompt_id}`);
    } catch (err) {
      setBanner({ kind: "error", text: err.message });
    }
  }, [showNodeErrors]);

  // Without a WebSocket, poll the history so results still arrive.
  useEffect(() => {
    if (!busy || connected) return undefined;
    const timer = setInterval(async () => {
      const id = activePrompt.current;
      const history = id ? await fetchHistory(id).catch(() => null) : null;
      if (history?.[id]) finish(id, "done");
    }, 1000);
    return () => clearInterval(timer);
  }, [busy, connected, finish]);

  const save = useCallback(() => {
    const graph = flowToGraph(state.current.nodes, state.current.edges);
    download("workflow.json", new Blob([JSON.stringify(toWorkflow(graph), null, 2)], { type: "application/json" }));
  }, []);

  const clear = useCallback(() => {
    snapshot();
    setNodes([]);
    setEdges([]);
  }, [snapshot]);

  const resetDefault = useCallback(() => {
    snapshot();
    setBanner(null);
    setGraph(defaultGraph(state.current.defs || {}, modelSize.current), state.current.defs || {});
    setTimeout(() => rf.fitView({ padding: 0.1 }), 50);
  }, [rf, setGraph, snapshot]);

  // ---- keyboard ------------------------------------------------------------------------------------------
  useEffect(() => {
    const onKey = (e) => {
      const mod = e.ctrlKey || e.metaKey;
      if (!mod) return;
      const inField = /^(INPUT|TEXTAREA|SELECT)$/.test(e.target?.tagName || "");
      const key = e.key.toLowerCase();
      if (key === "enter") {
        e.preventDefault();
        queue();
      } else if (key === "s") {
        e.preventDefault();
        save();
      } else if (key === "o") {
        e.preventDefault();
        fileInput.current?.click();
      } else if (!inField && key === "z" && !e.shiftKey) {
        e.preventDefault();
        undo();
      } else if (!inField && (key === "y" || (key === "z" && e.shiftKey))) {
        e.preventDefault();
        redo();
      }
    };
    window.addEventListener("keydown", onKey);
    return () => window.removeEventListener("keydown", onKey);
  }, [queue, save, undo, redo]);

  // A small scripting hook (used by the browser test; handy from the devtools console).
  useEffect(() => {
    window.latentworksEditor = {
      ...(window.latentworksEditor || {}),
      events: events.current,
      graph: () => flowToGraph(state.current.nodes, state.current.edges),
      apiPrompt: () => toApiPrompt(flowToGraph(state.current.nodes, state.current.edges), state.current.defs || {}).prompt,
      queue,
      undo,
      redo,
    };
  }, [queue, undo, redo]);

  const context = useMemo(() => ({ setWidget, upload, defFor }), [setWidget, upload, defFor]);

  return (
    <EditorContext.Provider value={context}>
      <div
        className="lw-app"
        onDragOver={(e) => e.preventDefault()}
        onDrop={(e) => {
          e.preventDefault();
          const file = e.dataTransfer?.files?.[0];
          if (file) loadFile(file);
        }}
      >
        <header className="lw-toolbar">
          <strong className="lw-brand">latentworks</strong>
          <button type="button" className="lw-queue" onClick={queue} title="Ctrl+Enter">
            Queue
          </button>
          <button type="button" onClick={() => interrupt()} title="stop the running job">
            Interrupt
          </button>
          <button type="button" onClick={save} title="Ctrl+S">
            Save
          </button>
          <button type="button" onClick={() => fileInput.current?.click()} title="Ctrl+O: a workflow JSON or a PNG made by latentworks/ComfyUI">
            Load
          </button>
          <button type="button" onClick={undo} title="Ctrl+Z">
            Undo
          </button>
          <button type="button" onClick={redo} title="Ctrl+Y or Ctrl+Shift+Z">
            Redo
          </button>
          <button type="button" onClick={resetDefault}>
            Default
          </button>
          <button type="button" onClick={clear}>
            Clear
          </button>
          <input
            ref={fileInput}
            id="lw-load-input"
            type="file"
            accept=".json,.png,application/json,image/png"
            hidden
            onChange={(e) => {
              if (e.target.files[0]) loadFile(e.target.files[0]);
              e.target.value = "";
            }}
          />
          <span className={`lw-status${connected ? "" : " lw-offline"}`} data-testid="status">
            {connected ? "●" : "○"} {status}
            {queueRemaining ? ` · queue ${queueRemaining}` : ""}
          </span>
        </header>
        {banner && (
          <div className={`lw-banner lw-banner-${banner.kind}`} data-testid="banner" onClick={() => setBanner(null)}>
            {banner.text}
          </div>
        )}
        <div className="lw-main">
          <NodeMenu defs={defs || {}} onAdd={addNode} />
          <div className="lw-canvas">
            <ReactFlow
              nodes={nodes}
              edges={edges}
              nodeTypes={nodeTypes}
              onNodesChange={onNodesChange}
              onEdgesChange={onEdgesChange}
              onConnect={onConnect}
              onBeforeDelete={onBeforeDelete}
              onNodeDragStart={onNodeDragStart}
              isValidConnection={isValidConnection}
              deleteKeyCode={["Delete", "Backspace"]}
              colorMode="dark"
              minZoom={0.1}
              proOptions={{ hideAttribution: true }}
            >
              <Background gap={24} />
              <Controls />
            </ReactFlow>
          </div>
          <aside className="lw-results" data-testid="results">
            <h3>Results</h3>
            {preview && <img className="lw-preview" src={preview} alt="live preview" />}
            {results.map((r) => (
              <figure key={r.url} className="lw-result">
                <a href={r.url} target="_blank" rel="noreferrer">
                  <img src={r.url} alt={r.filename} />
                </a>
                <figcaption>
                  <a href={r.url} download={r.filename}>
                    download {r.filename}
                  </a>
                </figcaption>
              </figure>
            ))}
            {!results.length && !preview && <p className="lw-hint">Queue the graph (Ctrl+Enter); images show here.</p>}
          </aside>
        </div>
      </div>
    </EditorContext.Provider>
  );
}

export default function App() {
  return (
    <ReactFlowProvider>
      <Editor />
    </ReactFlowProvider>
  );
}

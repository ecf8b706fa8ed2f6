// One node on the canvas: title, typed input/output sockets, widgets, errors, progress and images.
import { Handle, Position } from "@xyflow/react";
import { createContext, memo, useContext, useEffect, useRef, useState } from "react";
import { coerceNumber } from "./schema.js";

export const EditorContext = createContext(null);

const TYPE_COLORS = {
  MODEL: "#b39ddb",
  CLIP: "#ffd54f",
  VAE: "#ef5350",
  CONDITIONING: "#ffa726",
  LATENT: "#f48fb1",
  IMAGE: "#64b5f6",
  MASK: "#81c784",
  CONTROL_NET: "#4db6ac",
};

export function typeColor(type) {
  if (TYPE_COLORS[type]) return TYPE_COLORS[type];
  let h = 0;
  for (const c of String(type)) h = (h * 31 + c.charCodeAt(0)) % 360;
  return `hsl(${h} 60% 65%)`;
}

function NumberWidget({ widget, value, onCommit }) {
  const [text, setText] = useState(String(value));
  useEffect(() => setText(String(value)), [value]);
  const commit = () => {
    const v = coerceNumber(widget, text);
    setText(String(v));
    if (v !== value) onCommit(v);
  };
  return (
    <input
      className="nodrag lw-input"
      type="number"
      name={widget.name}
      value={text}
      step={widget.step}
      min={Number.isFinite(widget.min) ? widget.min : undefined}
      max={Number.isFinite(widget.max) ? widget.max : undefined}
      onChange={(e) => setText(e.target.value)}
      onBlur={commit}
      onKeyDown={(e) => e.key === "Enter" && e.currentTarget.blur()}
    />
  );
}

function Widget({ nodeId, widget, value }) {
  const { setWidget, upload } = useContext(EditorContext);
  const fileRef = useRef(null);
  const set = (v) => setWidget(nodeId, widget.name, v);
  let control;
  if (widget.kind === "INT" || widget.kind === "FLOAT") {
    control = <NumberWidget widget={widget} value={value} onCommit={set} />;
  } else if (widget.kind === "BOOLEAN") {
    control = (
      <input className="nodrag" type="checkbox" name={widget.name} checked={Boolean(value)} onChange={(e) => set(e.target.checked)} />
    );
  } else if (widget.kind === "COMBO") {
    const known = widget.choices.includes(value);
    control = (
      <span className="lw-combo">
        <select className={`nodrag lw-input${known ? "" : " lw-unknown"}`} name={widget.name} value={value} onChange={(e) => set(e.target.value)}>
          {!known && <option value={value}>{`${value} (not on server)`}</option>}
          {widget.choices.map((c) => (
            <option key={c} value={c}>
              {c}
            </option>
          ))}
        </select>
        {widget.upload && (
          <>
            <button type="button" className="nodrag lw-small" onClick={() => fileRef.current?.click()}>
              upload
            </button>
            <input
              ref={fileRef}
              type="file"
              accept="image/*"
              hidden
              onChange={(e) => e.target.files[0] && upload(nodeId, widget.name, e.target.files[0])}
            />
          </>
        )}
      </span>
    );
  } else if (widget.multiline) {
    control = (
      <textarea className="nodrag nowheel lw-input" name={widget.name} rows={4} value={value} onChange={(e) => set(e.target.value)} />
    );
  } else {
    control = <input className="nodrag lw-input" type="text" name={widget.name} value={value} onChange={(e) => set(e.target.value)} />;
  }
  return (
    <label className={`lw-widget lw-widget-${widget.kind.toLowerCase()}`} data-widget={widget.name}>
      <span className="lw-widget-name">{widget.name}</span>
      {control}
    </label>
  );
}

function NodeView({ id, data, selected }) {
  const { defFor } = useContext(EditorContext);
  const def = defFor(data.classType);
  const errors = data.errors || [];
  const erroredInputs = new Set(errors.map((e) => e.input).filter(Boolean));
  const cls = [
    "lw-node",
    def.missing && "lw-missing",
    errors.length && "lw-error",
    data.running && "lw-running",
    selected && "lw-selected",
  ]
    .filter(Boolean)
    .join(" ");
  return (
    <div className={cls} data-testid="node" data-id={id} data-class={data.classType}>
      <div className="lw-title">
        <span>{def.title}</span>
        <span className="lw-id">#{id}</span>
      </div>
      {def.missing && <div className="lw-missing-note">{`"${data.classType}" is not on this server`}</div>}
      {def.inputs.map((input) => (
        <div key={input.name} className={`lw-row lw-in${erroredInputs.has(input.name) ? " lw-bad" : ""}`} data-input={input.name}>
          <Handle
            type="target"
            position={Position.Left}
            id={`i:${input.name}`}
            className="lw-handle"
            style={{ background: typeColor(input.type) }}
            title={input.type}
          />
          <span>{input.name}</span>
          <span className="lw-type">{input.type}</span>
        </div>
      ))}
      {def.outputs.map((output, slot) => (
        <div key={`o${slot}`} className="lw-row lw-out" data-output={slot}>
          {output.name !== output.type && <span className="lw-type">{output.type}</span>}
          <span>{output.name}</span>
          <Handle
            type="source"
            position={Position.Right}
            id={`o${slot}`}
            className="lw-handle"
            style={{ background: typeColor(output.type) }}
            title={output.type}
          />
        </div>
      ))}
      {def.widgets.map((w) => (
        <Widget key={w.name} nodeId={id} widget={w} value={data.widgets[w.name]} />
      ))}
      {data.progress && (
        <div className="lw-progress" title={`${data.progress.value}/${data.progress.max}`}>
          <div style={{ width: `${(100 * data.progress.value) / Math.max(1, data.progress.max)}%` }} />
        </div>
      )}
      {errors.length > 0 && (
        <ul className="lw-errors">
          {errors.map((e, i) => (
            <li key={i}>{e.text}</li>
          ))}
        </ul>
      )}
      {data.preview && <img className="lw-node-preview" src={data.preview} alt="preview" />}
      {(data.images || []).map((img) => (
        <img key={img.url} className="lw-node-image" src={img.url} alt={img.filename} />
      ))}
    </div>
  );
}

export default memo(NodeView);

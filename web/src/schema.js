// Node schemas: turns one /object_info entry (ComfyUI's format) into what the editor draws.
//
// /object_info maps class name -> {input: {required, optional, hidden}, input_order?, output: [types],
// output_name: [names], display_name, category, output_node, description}. Each input is
// [type, options]; the type is a string ("INT", "MODEL", ...), a list of choices (a combo), or "COMBO"
// with options.options holding the choices (newer ComfyUI).

export const WIDGET_TYPES = new Set(["INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"]);

/**
 * @typedef {{name: string, kind: "INT"|"FLOAT"|"STRING"|"BOOLEAN"|"COMBO", default: any, min?: number,
 *   max?: number, step?: number, round?: number, multiline?: boolean, choices?: string[],
 *   upload?: boolean, optional: boolean}} Widget
 * @typedef {{name: string, type: string, optional: boolean}} Socket
 * @typedef {{classType: string, title: string, category: string, description: string, inputs: Socket[],
 *   widgets: Widget[], outputs: {name: string, type: string}[], outputNode: boolean, missing: boolean}} NodeDef
 */

function orderedEntries(section, order) {
  if (!section) return [];
  const names = Array.isArray(order) ? order.filter((n) => n in section) : [];
  for (const n of Object.keys(section)) if (!names.includes(n)) names.push(n);
  return names.map((n) => [n, section[n]]);
}

function widgetFrom(name, spec, optional) {
  const [type, opts = {}] = Array.isArray(spec) ? spec : [spec, {}];
  if (Array.isArray(type) || type === "COMBO") {
    const choices = Array.isArray(type) ? type : opts.options || [];
    return {
      name,
      kind: "COMBO",
      choices: choices.map(String),
      default: opts.default ?? choices[0] ?? "",
      upload: Boolean(opts.image_upload || opts.upload),
      optional,
    };
  }
  if (!WIDGET_TYPES.has(type) || opts.forceInput) return null;
  if (type === "INT" || type === "FLOAT") {
    const step = type === "INT" ? (opts.step ?? 1) : (opts.step ?? 0.01);
    return {
      name,
      kind: type,
      default: opts.default ?? Math.max(0, opts.min ?? 0),
      min: opts.min ?? -Infinity,
      max: opts.max ?? Infinity,
      step,
      round: opts.round,
      optional,
    };
  }
  if (type === "BOOLEAN") return { name, kind: type, default: Boolean(opts.default), optional };
  return { name, kind: "STRING", default: opts.default ?? "", multiline: Boolean(opts.multiline), optional };
}

/** @returns {NodeDef} */
export function nodeDefFromInfo(classType, info) {
  const inputs = [];
  const widgets = [];
  const order = info.input_order || {};
  for (const [section, optional] of [
    ["required", false],
    ["optional", true],
  ]) {
    for (const [name, spec] of orderedEntries(info.input?.[section], order[section])) {
      const w = widgetFrom(name, spec, optional);
      if (w) widgets.push(w);
      else inputs.push({ name, type: String(Array.isArray(spec) ? spec[0] : spec), optional });
    }
  }
  const outTypes = info.output || [];
  const outputs = outTypes.map((t, i) => ({
    name: (info.output_name && info.output_name[i]) || String(t),
    type: String(Array.isArray(t) ? "COMBO" : t),
  }));
  return {
    classType,
    title: info.display_name || info.name || classType,
    category: info.category || "other",
    description: info.description || "",
    inputs,
    widgets,
    outputs,
    outputNode: Boolean(info.output_node),
    missing: false,
  };
}

export function nodeDefsFromObjectInfo(objectInfo) {
  const defs = {};
  for (const [classType, info] of Object.entries(objectInfo || {})) defs[classType] = nodeDefFromInfo(classType, info);
  return defs;
}

/** Two socket types connect when equal, when either is the wildcard "*", or when comma lists share a type. */
export function typesMatch(outputType, inputType) {
  if (outputType === "*" || inputType === "*") return true;
  const a = String(outputType).split(",");
  const b = new Set(String(inputType).split(","));
  return a.some((t) => b.has(t));
}

/** Clamp and round a number the way the widget's range says; returns the default for junk. */
export function coerceNumber(widget, raw) {
  let v = typeof raw === "number" ? raw : Number(raw);
  if (!Number.isFinite(v)) return widget.default;
  v = Math.min(widget.max, Math.max(widget.min, v));
  if (widget.kind === "INT") v = Math.round(v);
  else if (typeof widget.round === "number" && widget.round > 0) v = Math.round(v / widget.round) * widget.round;
  return v;
}

// Hand-written shapes of the default graph's nodes (ComfyUI's input and output names). Used only to draw a
// default-graph node that /object_info does not list, so the editor still opens and can mark it missing.
const S = (type) => [type];
export const FALLBACK_INFO = {
  CheckpointLoaderSimple: {
    input: { required: { ckpt_name: [["default"]] } },
    output: ["MODEL", "CLIP", "VAE"],
    category: "loaders",
  },
  CLIPTextEncode: {
    input: { required: { text: ["STRING", { multiline: true }], clip: S("CLIP") } },
    output: ["CONDITIONING"],
    category: "conditioning",
  },
  EmptyLatentImage: {
    input: {
      required: {
        width: ["INT", { default: 512, min: 16, max: 16384, step: 8 }],
        height: ["INT", { default: 512, min: 16, max: 16384, step: 8 }],
        batch_size: ["INT", { default: 1, min: 1, max: 4096 }],
      },
    },
    output: ["LATENT"],
    category: "latent",
  },
  KSampler: {
    input: {
      required: {
        model: S("MODEL"),
        seed: ["INT", { default: 0, min: 0, max: 0xffffffffffffffff }],
        steps: ["INT", { default: 20, min: 1, max: 10000 }],
        cfg: ["FLOAT", { default: 8.0, min: 0, max: 100, step: 0.1, round: 0.01 }],
        sampler_name: [["euler"]],
        scheduler: [["normal"]],
        positive: S("CONDITIONING"),
        negative: S("CONDITIONING"),
        latent_image: S("LATENT"),
        denoise: ["FLOAT", { default: 1.0, min: 0, max: 1, step: 0.01 }],
      },
    },
    output: ["LATENT"],
    category: "sampling",
  },
  VAEDecode: {
    input: { required: { samples: S("LATENT"), vae: S("VAE") } },
    output: ["IMAGE"],
    category: "latent",
  },
  SaveImage: {
    input: { required: { images: S("IMAGE"), filename_prefix: ["STRING", { default: "latentworks" }] } },
    output: [],
    output_node: true,
    category: "image",
  },
};

/** A definition for a class the server does not offer: from the fallback table, else from what a workflow saved. */
export function missingNodeDef(classType, saved = {}) {
  const base = FALLBACK_INFO[classType]
    ? nodeDefFromInfo(classType, FALLBACK_INFO[classType])
    : {
        classType,
        title: classType,
        category: "missing",
        description: "",
        inputs: (saved.inputs || []).map((name) => ({ name, type: "*", optional: false })),
        widgets: Object.entries(saved.widgets || {}).map(([name, v]) => ({
          name,
          kind: typeof v === "boolean" ? "BOOLEAN" : typeof v === "number" ? "FLOAT" : "STRING",
          default: v,
          min: -Infinity,
          max: Infinity,
          step: 0.01,
          optional: false,
        })),
        outputs: Array.from({ length: saved.outputs || 0 }, (_, i) => ({ name: `output ${i}`, type: "*" })),
        outputNode: false,
      };
  return { ...base, missing: true };
}

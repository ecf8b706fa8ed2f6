// Builds the editor into the Python package so `latentworks serve` can serve it without npm.
// Fixed asset names (no content hash) keep the committed build stable and the server's routes simple:
// index.html loads ./assets/editor.js and ./assets/editor.css.
import { defineConfig } from "vite";
import { fileURLToPath } from "node:url";

const outDir = fileURLToPath(new URL("../src/latentworks/server/static", import.meta.url));

// Library error texts carry documentation links (react.dev, reactflow.dev). They are never fetched, but the
// built editor promises to name no external host at all, so they are written without a scheme.
const noExternalUrls = {
  name: "latentworks-no-external-urls",
  renderChunk(code) {
    return code.replaceAll("https://react.dev/", "react.dev/").replaceAll("https://reactflow.dev", "reactflow.dev");
  },
};

export default defineConfig({
  base: "./",
  plugins: [noExternalUrls],
  esbuild: { jsx: "automatic" },
  build: {
    outDir,
    emptyOutDir: true,
    target: "es2020",
    sourcemap: false,
    chunkSizeWarningLimit: 1000,
    rollupOptions: {
      // @xyflow/react marks itself "use client" for React server components; meaningless in a browser bundle.
      onwarn(warning, warn) {
        if (warning.code !== "MODULE_LEVEL_DIRECTIVE") warn(warning);
      },
      output: {
        entryFileNames: "assets/editor.js",
        chunkFileNames: "assets/[name].js",
        assetFileNames: "assets/editor[extname]",
      },
    },
  },
  server: {
    // `npm run dev` proxies the API to a running `latentworks serve` on port 8188.
    proxy: {
      "^/(object_info|prompt|history|view|upload|interrupt|queue)": "http://127.0.0.1:8188",
      "/ws": { target: "ws://127.0.0.1:8188", ws: true },
    },
  },
});

// Drives ComfyUI's official frontend (comfyui-frontend-package), served by the real latentworks server, in
// Debian's Chromium through playwright-core (installed in web/ by scripts/bootstrap_web.sh).
// Usage: node comfy_frontend_e2e.mjs <server url> <out dir> <first|after-restart>
//   first:          load, change a setting, reload, build and run a txt2img graph, save it, open the assets panel
//   after-restart:  (a fresh browser profile) the setting, the saved workflow and the finished job are still there
// Prints one JSON report on its last stdout line; exits non-zero with a message when a step fails.
import { mkdtempSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, "../../web/package.json"));
const { chromium } = require("playwright-core");

const [baseUrl, outDir, phase] = process.argv.slice(2);
const SETTING = "Comfy.Graph.ZoomSpeed";
const SETTING_VALUE = 1.35;
const WORKFLOW_NAME = "lw apple";
const report = { phase, pageErrors: [], consoleErrors: [], foreignRequests: [], httpErrors: [] };
const userDataDir = mkdtempSync(path.join(tmpdir(), "lw-comfy-"));

const started = Date.now();
const step = (name) => console.error(`[${((Date.now() - started) / 1000).toFixed(1)} s] ${phase}: ${name}`);

function check(cond, message) {
  if (!cond) throw new Error(`check failed: ${message}`);
}

const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  viewport: { width: 1400, height: 900 },
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic"],
});

try {
  const page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(30000);
  const origin = new URL(baseUrl).origin;
  // The frontend asks api.comfy.org for release notes; the test machine is offline, so such requests are
  // answered here (aborted) and listed in the report.
  await context.route((url) => !url.href.startsWith(origin) && !/^(data|blob):/.test(url.href), (route) => {
    report.foreignRequests.push(route.request().url());
    return route.abort();
  });
  page.on("pageerror", (e) => report.pageErrors.push(String(e).slice(0, 1000)));
  page.on("console", (m) => m.type() === "error" && report.consoleErrors.push(m.text().slice(0, 500)));
  page.on("response", (r) => r.status() >= 400 && report.httpErrors.push(`${r.status()} ${r.request().method()} ${r.url()}`));

  const ready = async () => {
    await page.waitForFunction(() => window.app?.graph && window.app.extensionManager?.setting && window.LiteGraph);
    await page.waitForTimeout(1500); // the first-run template dialog opens a moment after start-up
    await page.keyboard.press("Escape");
  };
  const setting = (id) => page.evaluate((id) => window.app.extensionManager.setting.get(id), id);
  const viewImages = () =>
    page.evaluate(() =>
      [...document.querySelectorAll("img")]
        .filter((i) => i.src.includes("/view?"))
        .map((i) => ({ src: i.src, width: i.naturalWidth })),
    );

  await page.goto(baseUrl);
  await ready();
  step("loaded");

  if (phase === "first") {
    report.settingBefore = await setting(SETTING);
    await page.evaluate(([id, v]) => window.app.extensionManager.setting.set(id, v), [SETTING, SETTING_VALUE]);
    await page.waitForTimeout(300);
    await page.reload();
    await ready();
  step("reloaded");
    report.settingAfterReload = await setting(SETTING);

    // Build the txt2img graph node by node with the frontend's own graph API, for the embedded default model.
    report.graph = await page.evaluate(() => {
      const app = window.app;
      app.graph.clear();
      const add = (type, x, y) => {
        const node = window.LiteGraph.createNode(type);
        node.pos = [x, y];
        app.graph.add(node);
        return node;
      };
      const set = (node, name, value) => {
        const widget = node.widgets.find((w) => w.name === name);
        widget.value = value;
      };
      const ckpt = add("CheckpointLoaderSimple", 0, 0);
      const pos = add("CLIPTextEncode", 300, 0);
      const neg = add("CLIPTextEncode", 300, 250);
      const latent = add("EmptyLatentImage", 300, 500);
      const sampler = add("KSampler", 650, 0);
      const decode = add("VAEDecode", 1000, 0);
      const save = add("SaveImage", 1200, 0);
      set(ckpt, "ckpt_name", "default");
      set(pos, "text", "a red apple");
      set(latent, "width", 64);
      set(latent, "height", 64);
      set(sampler, "steps", 2);
      set(sampler, "seed", 7);
      set(sampler, "control_after_generate", "fixed");
      ckpt.connect(0, sampler, 0);
      ckpt.connect(1, pos, 0);
      ckpt.connect(1, neg, 0);
      pos.connect(0, sampler, 1);
      neg.connect(0, sampler, 2);
      latent.connect(0, sampler, 3);
      sampler.connect(0, decode, 0);
      ckpt.connect(2, decode, 1);
      decode.connect(0, save, 0);
      window.__lwSave = save;
      // Bring every node into view: the frontend loads a node's images when it draws the node.
      app.canvas.ds.scale = 0.6;
      app.canvas.ds.offset = [40, 40];
      app.canvas.setDirty(true, true);
      return { nodes: app.graph._nodes.length, links: Object.keys(app.graph.links).length, saveId: save.id,
        python_module: app.graph._nodes.map((n) => n.constructor.nodeData?.python_module) };
    });
    const t0 = Date.now();
    step("built the graph");
    report.queued = await page.evaluate(async () => {
      await window.app.queuePrompt(0, 1);
      return (await (await fetch("/api/queue")).json()).queue_pending.length;
    });
    // The image appears in the SaveImage node (drawn on the canvas from node.imgs).
    await page.waitForFunction(() => (window.__lwSave.imgs ?? []).some((i) => i.complete && i.naturalWidth > 0), null, {
      timeout: 60000,
    }).catch(async (e) => {
      report.jobs = await page.evaluate(async () => (await (await fetch("/api/jobs")).json()).jobs);
      report.lastError = await page.evaluate(() => [window.app.extensionManager.lastExecutionError, window.app.extensionManager.lastNodeErrors]);
      report.imgs = await page.evaluate(() => window.__lwSave.imgs?.map((i) => [i.src, i.complete, i.naturalWidth]));
      throw e;
    });
    step("image shown");
    report.runSeconds = (Date.now() - t0) / 1000;
    report.nodeImages = await page.evaluate(() => window.__lwSave.imgs.map((i) => ({ src: i.src, width: i.naturalWidth })));

    step("saving");
    // Save through the UI's save dialog (it asks for a file name).
    // (not awaited: the command resolves only once the dialog is answered)
    await page.evaluate(() => void window.app.extensionManager.command.execute("Comfy.SaveWorkflow"));
    const nameInput = page.getByRole("dialog").locator("input").first();
    await nameInput.waitFor();
    await nameInput.fill(WORKFLOW_NAME);
    await page.keyboard.press("Enter");
    await page.waitForFunction(
      (name) => window.app.extensionManager.workflow.activeWorkflow?.path === `workflows/${name}.json` &&
        !window.app.extensionManager.workflow.activeWorkflow?.isTemporary,
      WORKFLOW_NAME,
    );
    step("saved");
    report.activeWorkflow = await page.evaluate(() => window.app.extensionManager.workflow.activeWorkflow.path);

    // The queue / media assets panel lists the finished job with its thumbnail (from /api/jobs).
    report.viewImagesBeforePanel = (await viewImages()).length;
    await page.evaluate(() => window.app.extensionManager.command.execute("Workspace.ToggleSidebarTab.assets"));
    await page.waitForFunction(() => [...document.querySelectorAll("img")].some((i) => i.src.includes("/view?") && i.naturalWidth > 0));
    step("panel shown");
    report.panelImages = await viewImages();
    await page.screenshot({ path: path.join(outDir, "comfy-first.png") });
  } else {
    report.settingAfterRestart = await setting(SETTING);
    // The saved workflow is listed in the workflows sidebar and opens from there.
    await page.evaluate(() => window.app.extensionManager.command.execute("Workspace.ToggleSidebarTab.workflows"));
    const item = page.getByText(WORKFLOW_NAME, { exact: true }).first();
    await item.waitFor();
    step("workflow listed");
    report.workflowListed = true;
    await page.evaluate(() => window.app.graph.clear());
    await item.click();
    await page.waitForFunction(() => window.app.graph._nodes.length === 7);
    step("workflow loaded");
    report.loadedWorkflow = await page.evaluate(() => ({
      nodes: window.app.graph._nodes.map((n) => n.type).sort(),
      links: Object.keys(window.app.graph.links).length,
      text: window.app.graph._nodes.filter((n) => n.type === "CLIPTextEncode").map((n) => n.widgets[0].value).sort(),
    }));
    await page.evaluate(() => window.app.extensionManager.command.execute("Workspace.ToggleSidebarTab.assets"));
    await page.waitForFunction(() => [...document.querySelectorAll("img")].some((i) => i.src.includes("/view?") && i.naturalWidth > 0));
    report.panelImages = await viewImages();
    await page.screenshot({ path: path.join(outDir, "comfy-restart.png") });
  }
  check(report.pageErrors.length === 0, `page errors: ${report.pageErrors.join(" | ")}`);
} catch (e) {
  console.error(String(e.stack || e));
  console.log(JSON.stringify(report));
  process.exitCode = 1;
} finally {
  await context.close();
  rmSync(userDataDir, { recursive: true, force: true });
}
if (!process.exitCode) console.log(JSON.stringify(report));

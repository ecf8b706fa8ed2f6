// Drives the editor in Debian's Chromium through playwright-core (installed in web/ by scripts/bootstrap_web.sh).
// Usage: node editor_e2e.mjs <editor url> <out dir> <fake|real> [ComfyUI UI-format workflow files to load...]
// Prints one JSON report on its last stdout line; exits non-zero with a message when a step fails.
import { readFileSync, mkdtempSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, "../../web/package.json"));
const { chromium } = require("playwright-core");

const [baseUrl, outDir, mode = "fake", ...uiWorkflows] = process.argv.slice(2);
const report = { mode, consoleErrors: [], foreignRequests: [] };
const userDataDir = mkdtempSync(path.join(tmpdir(), "lw-chromium-"));

function check(cond, message) {
  if (!cond) throw new Error(`check failed: ${message}`);
}

const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  acceptDownloads: true,
  viewport: { width: 1600, height: 900 },
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
  ],
});

try {
  const page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(15000);
  const origin = new URL(baseUrl).origin;
  page.on("console", (m) => m.type() === "error" && report.consoleErrors.push(m.text()));
  page.on("pageerror", (e) => report.consoleErrors.push(String(e)));
  page.on("request", (r) => {
    const u = r.url();
    if (!u.startsWith(origin) && !u.startsWith("data:") && !u.startsWith("blob:")) report.foreignRequests.push(u);
  });

  const graph = () => page.evaluate(() => window.latentworksEditor.graph());
  const widget = async (id, name) => (await graph()).nodes.find((n) => n.id === id)?.widgets[name];
  const linkInto = async (id, input) => (await graph()).links.find((l) => l.target === id && l.targetInput === input);
  const nodeCount = () => page.locator('[data-testid="node"]').count();
  const edgeCount = () => page.locator(".react-flow__edge").count();
  // [nodes, edges] as drawn, once the drawing has caught up with the editor's graph: React Flow draws
  // edges a frame or more after their nodes (it needs the handles' positions), and under CPU load that
  // can take seconds. If it never catches up (a real bug), the counts are reported as they are.
  const settledCounts = async () => {
    await page
      .waitForFunction(() => {
        const g = window.latentworksEditor.graph();
        return document.querySelectorAll('[data-testid="node"]').length === g.nodes.length &&
          document.querySelectorAll(".react-flow__edge").length === g.links.length;
      }, null, { timeout: 10000 })
      .catch(() => {});
    return [await nodeCount(), await edgeCount()];
  };
  const clickPane = () => page.locator(".react-flow__pane").click({ position: { x: 5, y: 5 } });
  const center = async (locator) => {
    const b = await locator.boundingBox();
    return { x: b.x + b.width / 2, y: b.y + b.height / 2 };
  };
  const drag = async (from, to) => {
    const a = await center(from);
    const b = await center(to);
    await page.mouse.move(a.x, a.y);
    await page.mouse.down();
    await page.mouse.move((a.x + b.x) / 2, (a.y + b.y) / 2, { steps: 5 });
    await page.mouse.move(b.x, b.y, { steps: 5 });
    await page.mouse.up();
  };
  const outHandle = (id, slot) => page.locator(`[data-testid="node"][data-id="${id}"] [data-output="${slot}"] .react-flow__handle`);
  const inHandle = (id, name) => page.locator(`[data-testid="node"][data-id="${id}"] [data-input="${name}"] .react-flow__handle`);

  await page.goto(baseUrl);
  await page.waitForFunction(() => document.querySelectorAll('[data-testid="node"]').length >= 7);
  await page.waitForTimeout(300);
  report.nodeClasses = await page.$$eval('[data-testid="node"]', (els) => els.map((e) => e.dataset.class));
  report.edgeCount = (await settledCounts())[1];
  report.missing = await page.$$eval(".lw-missing", (els) => els.map((e) => e.dataset.class));
  report.menuItems = await page.$$eval(".lw-menu-item", (els) => els.map((e) => e.dataset.class));
  report.defaultWidgets = Object.fromEntries((await graph()).nodes.map((n) => [n.id, n.widgets]));

  if (mode === "real") {
    await page.locator(".lw-queue").click();
    // Either results come back or the server reports why not; both must show in the page.
    await page.waitForFunction(
      () => document.querySelector(".lw-result img")?.naturalWidth > 0 || document.querySelector('[data-testid="banner"]'),
      null,
      { timeout: 120000 },
    );
    report.lastPromptId = await page.evaluate(() => window.latentworksEditor.lastPromptId ?? null);
    report.events = await page.evaluate(() => [...window.latentworksEditor.events]);
    report.banner = await page.evaluate(() => document.querySelector('[data-testid="banner"]')?.textContent ?? null);
    report.resultImages = await page.$$eval(".lw-result img", (els) => els.map((e) => [e.getAttribute("src"), e.naturalWidth]));
    await page.screenshot({ path: path.join(outDir, "editor-real.png") });

    // ComfyUI UI-format workflows, converted by the server (POST /workflow/convert) and drawn, or refused
    // (then the banner says why and the graph on screen stays as it was).
    report.loads = [];
    for (const file of uiWorkflows) {
      const name = path.basename(file);
      await page.locator("#lw-load-input").setInputFiles(file);
      await page.waitForFunction(
        (n) =>
          document.querySelector('[data-testid="status"]')?.textContent.includes(`loaded ${n}`) ||
          document.querySelector('[data-testid="banner"]')?.textContent.includes(`could not load ${n}`),
        name,
      );
      const [drawnNodes, drawnEdges] = await settledCounts();
      const g = await graph();
      const banner = await page.evaluate(() => document.querySelector('[data-testid="banner"]')?.textContent ?? null);
      report.loads.push({ name, nodes: g.nodes, links: g.links, drawnNodes, drawnEdges, banner });
    }
  } else {
    check(report.missing.length === 0, `no node should be marked missing, got ${report.missing}`);

    // Widget change + undo/redo (focus outside any field, so Ctrl+Z is the editor's, not the input's).
    const steps = page.locator('[data-testid="node"][data-id="5"] [data-widget="steps"] input');
    await steps.fill("12");
    await steps.press("Enter");
    report.stepsAfterEdit = await widget("5", "steps");
    await clickPane();
    await page.keyboard.press("Control+z");
    report.stepsAfterUndo = await widget("5", "steps");
    await page.keyboard.press("Control+y");
    report.stepsAfterRedo = await widget("5", "steps");

    // Add a node from the menu (search opens every category), then undo it.
    await page.locator(".lw-search").fill("invert");
    await page.locator('.lw-menu-item[data-class="ImageInvert"]').click();
    report.nodesAfterAdd = await nodeCount();
    await clickPane();
    await page.keyboard.press("Control+z");
    report.nodesAfterAddUndo = await nodeCount();
    await page.locator(".lw-search").fill("");

    // Typed sockets: VAE -> positive (CONDITIONING) is refused; CONDITIONING -> positive is accepted.
    await drag(outHandle("1", 2), inHandle("5", "positive"));
    report.positiveAfterBadDrag = await linkInto("5", "positive");
    report.edgesAfterBadDrag = (await settledCounts())[1];
    await drag(outHandle("3", 0), inHandle("5", "positive"));
    report.positiveAfterGoodDrag = await linkInto("5", "positive");
    report.edgesAfterGoodDrag = (await settledCounts())[1];
    await clickPane();
    await page.keyboard.press("Control+z");
    report.positiveAfterConnectUndo = await linkInto("5", "positive");

    // Remove a node with Delete, then undo.
    await page.locator('[data-testid="node"][data-id="4"] .lw-title').click();
    await page.keyboard.press("Delete");
    report.afterDelete = await settledCounts();
    await clickPane();
    await page.keyboard.press("Control+z");
    report.afterDeleteUndo = await settledCounts();

    // The server refuses a prompt: its node_errors show on the offending node.
    const positive = page.locator('[data-testid="node"][data-id="2"] textarea');
    await positive.fill("a forbidden apple");
    await page.locator(".lw-queue").click();
    await page.locator('.lw-node.lw-error[data-id="2"]').waitFor();
    report.nodeErrorText = await page.locator('[data-id="2"] .lw-errors').textContent();
    report.errorBanner = await page.locator('[data-testid="banner"]').textContent();
    report.erroredNodes = await page.$$eval(".lw-node.lw-error", (els) => els.map((e) => e.dataset.id));

    // Fix it and queue: progress, preview and the result image arrive over the WebSocket and /view.
    await positive.fill("a red apple, google style");
    await clickPane();
    await page.keyboard.press("Control+Enter");
    await page.waitForFunction(() => document.querySelector(".lw-result img")?.naturalWidth > 0);
    report.errorsAfterFix = await page.$$eval(".lw-node.lw-error", (els) => els.map((e) => e.dataset.id));
    report.events = await page.evaluate(() => [...window.latentworksEditor.events]);
    report.resultImages = await page.$$eval(".lw-result img", (els) => els.map((e) => [e.getAttribute("src"), e.naturalWidth]));
    report.downloadLinks = await page.$$eval(".lw-result a[download]", (els) => els.map((e) => [e.getAttribute("href"), e.getAttribute("download")]));
    report.nodeImages = await page.$$eval('[data-id="7"] .lw-node-image', (els) => els.length);
    await page.waitForTimeout(200);
    await page.screenshot({ path: path.join(outDir, "editor.png") });

    // Save downloads the workflow JSON.
    const [dl] = await Promise.all([page.waitForEvent("download"), page.locator(".lw-toolbar button", { hasText: "Save" }).click()]);
    const savedPath = path.join(outDir, "workflow.json");
    await dl.saveAs(savedPath);
    const saved = JSON.parse(readFileSync(savedPath, "utf8"));
    report.saved = { format: saved.format, nodes: saved.nodes.length, links: saved.links.length };

    // Dropping the result PNG restores the graph held in its "workflow" text chunk.
    await positive.fill("something else");
    await page.locator('[data-testid="node"][data-id="5"] [data-widget="steps"] input').fill("33");
    await page.locator('[data-testid="node"][data-id="5"] [data-widget="steps"] input').press("Enter");
    const src = report.resultImages[0][0];
    await page.evaluate(async (url) => {
      const blob = await (await fetch(url)).blob();
      const dt = new DataTransfer();
      dt.items.add(new File([blob], "result.png", { type: "image/png" }));
      document.querySelector(".lw-app").dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));
    }, src);
    await page.waitForFunction(() => window.latentworksEditor.graph().nodes.find((n) => n.id === "2")?.widgets.text === "a red apple, google style");
    const [pngNodes, pngEdges] = await settledCounts();
    report.afterPngDrop = { steps: await widget("5", "steps"), nodes: pngNodes, edges: pngEdges };

    // Loading the saved JSON (the Load button's file input) gives the same graph back.
    await positive.fill("changed again");
    await page.locator("#lw-load-input").setInputFiles(savedPath);
    await page.waitForFunction(() => window.latentworksEditor.graph().nodes.find((n) => n.id === "2")?.widgets.text === "a red apple, google style");
    const loaded = await graph();
    report.afterJsonLoad = { nodes: loaded.nodes.length, links: loaded.links.length, steps: await widget("5", "steps") };
  }
  console.log(JSON.stringify(report));
} finally {
  await context.close();
  rmSync(userDataDir, { recursive: true, force: true });
}

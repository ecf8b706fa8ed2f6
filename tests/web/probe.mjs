import { mkdtempSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, "../../web/package.json"));
const { chromium } = require("playwright-core");
const [baseUrl] = process.argv.slice(2);
const ctx = await chromium.launchPersistentContext(mkdtempSync(path.join(tmpdir(), "lw-")), {
  executablePath: "/usr/bin/chromium", headless: true, viewport: { width: 1400, height: 900 },
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"],
});
const page = ctx.pages()[0] || (await ctx.newPage());
const log = [];
page.on("console", (m) => (m.type() === "error" || m.type() === "warning") && log.push(`${m.type()}: ${m.text().slice(0, 300)}`));
page.on("pageerror", (e) => log.push("PAGEERROR " + String(e).slice(0, 500)));
page.on("response", (r) => r.status() >= 400 && log.push(`HTTP ${r.status()} ${r.request().method()} ${r.url()}`));
page.on("requestfailed", (r) => log.push(`FAILED ${r.url()} ${r.failure()?.errorText}`));
const t0 = Date.now();
await page.goto(baseUrl);
await page.waitForFunction(() => window.app?.graph && window.app.graph._nodes?.length >= 0, null, { timeout: 60000 }).catch((e) => log.push("wait " + e));
await page.waitForTimeout(5000);
log.push("loaded in " + (Date.now() - t0));
log.push("nodes: " + JSON.stringify(await page.evaluate(() => window.app?.graph?._nodes?.map((n) => n.type))));
await page.screenshot({ path: "/tmp/fe/shot.png" });
console.log(log.join("\n"));
await ctx.close();

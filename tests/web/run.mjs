// Opens the browser build of the viewer (scripts/build-web) in headless Chromium, performs the
// action given in the URL, waits until the page writes its result into <pre id="result">, and
// saves that JSON and a screenshot of the page. tests/web.rs compares them with the native run.
//
//   node run.mjs WEB_DIR OUT.json SCREENSHOT.png QUERY
//   (e.g. QUERY = "action=generate:3&seed=0"; CHROMIUM=/path overrides /usr/bin/chromium)
//
// With LOWBIT_WEB_DROP=FILE, once the first result is in, FILE is dropped on the page as a
// user would drag it from their desktop, and the viewer's result for it (`"action":
// "upload:NAME"`) is saved as OUT.json with `.drop.json` in place of `.json`.
import { createServer } from 'node:http';
import { readFile, writeFile } from 'node:fs/promises';
import { extname, join, normalize } from 'node:path';
import { chromium } from 'playwright-core';

const [webDir, outJson, outPng, query] = process.argv.slice(2);
if (!query) {
  console.error('usage: node run.mjs WEB_DIR OUT.json SCREENSHOT.png QUERY');
  process.exit(2);
}
const timeoutMs = Number(process.env.LOWBIT_WEB_TIMEOUT_MS || 600_000);

// application/wasm lets the browser compile the module while it streams in.
const TYPES = { '.html': 'text/html', '.js': 'text/javascript', '.wasm': 'application/wasm', '.json': 'application/json' };

// A static server on 127.0.0.1 for WEB_DIR only.
const server = createServer(async (req, res) => {
  const path = normalize(decodeURIComponent(new URL(req.url, 'http://x').pathname)).replace(/^(\.\.[/\\])+/, '');
  try {
    const body = await readFile(join(webDir, path.endsWith('/') ? path + 'index.html' : path));
    res.writeHead(200, { 'content-type': TYPES[extname(path)] || 'application/octet-stream' });
    res.end(body);
  } catch {
    res.writeHead(404);
    res.end('not found');
  }
});
await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
const url = `http://127.0.0.1:${server.address().port}/index.html?${query}`;

// WebGPU on SwiftShader (the only adapter headless Chromium offers without a GPU); without
// the ANGLE/Vulkan flags compute works but the canvas captures blank.
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: [
    '--enable-unsafe-webgpu', '--use-angle=swiftshader', '--enable-features=Vulkan', '--use-vulkan=swiftshader',
    '--no-sandbox', '--no-first-run', '--disable-background-networking', '--disable-component-update',
    '--disable-sync', '--disable-quic',
  ],
});
try {
  const page = await browser.newPage({ viewport: { width: 1000, height: 720 } });
  page.on('console', (m) => console.log(`[page ${m.type()}] ${m.text()}`));
  page.on('pageerror', (e) => console.log(`[page error] ${e.message}`));
  const t0 = Date.now();
  await page.goto(url);
  await page.waitForFunction(() => document.getElementById('result')?.textContent.length > 0, null, { timeout: timeoutMs, polling: 250 });
  const text = await page.$eval('#result', (e) => e.textContent);
  console.log(`result after ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  await writeFile(outJson, text);
  await page.screenshot({ path: outPng });
  const drop = process.env.LOWBIT_WEB_DROP;
  if (drop) {
    const bytes = [...(await readFile(drop))];
    const name = drop.split('/').pop();
    await page.$eval('#result', (e) => { e.textContent = ''; });
    // A DataTransfer holding the file, dispatched as the browser does for a real drag.
    const dataTransfer = await page.evaluateHandle(([bytes, name]) => {
      const dt = new DataTransfer();
      dt.items.add(new File([new Uint8Array(bytes)], name, { type: 'image/png' }));
      return dt;
    }, [bytes, name]);
    for (const type of ['dragenter', 'dragover', 'drop']) {
      await page.dispatchEvent('canvas', type, { dataTransfer });
    }
    await page.waitForFunction(() => document.getElementById('result')?.textContent.length > 0, null, { timeout: timeoutMs, polling: 250 });
    const dropped = await page.$eval('#result', (e) => e.textContent);
    console.log(`dropped ${name}: result after ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    await writeFile(outJson.replace(/\.json$/, '.drop.json'), dropped);
  }
  // An {"error": ...} result is still a result: the caller decides whether it expected one.
  if ('error' in JSON.parse(text)) console.log(`the page reported an error: ${text}`);
} finally {
  await browser.close();
  server.close();
}

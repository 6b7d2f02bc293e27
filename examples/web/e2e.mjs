// End-to-end check of the page in a real headless Chromium (driven by playwright-core, which
// downloads no browser): open the page, upload an image, read the cam the page computed.
//
//   node e2e.mjs --url http://127.0.0.1:8000/web/?model=explain.onnx --image img.png \
//                --out result.json [--screenshot shot.png] [--chromium /usr/bin/chromium]
//
// Every request that does not go to the page's own host is blocked and reported.
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

import { chromium } from 'playwright-core';

const { values } = parseArgs({
  options: {
    url: { type: 'string' }, image: { type: 'string' }, out: { type: 'string' },
    screenshot: { type: 'string' }, chromium: { type: 'string', default: '/usr/bin/chromium' },
    timeout: { type: 'string', default: '60000' },
  },
});
const timeout = Number(values.timeout);
const browser = await chromium.launch({
  executablePath: values.chromium,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const report = { external: [], console: [], pageErrors: [] };
try {
  const page = await browser.newPage({ viewport: { width: 1000, height: 760 } });
  const home = new URL(values.url).host;
  await page.route('**/*', (route) => {
    const url = new URL(route.request().url());
    if (url.host === home || url.protocol === 'data:' || url.protocol === 'blob:') return route.continue();
    report.external.push(url.href);
    return route.abort();
  });
  page.on('console', (msg) => report.console.push(`${msg.type()}: ${msg.text()}`));
  page.on('pageerror', (err) => report.pageErrors.push(err.message));
  await page.goto(values.url, { timeout });
  await page.waitForFunction(() => window.onnxGradcam && window.onnxGradcam.ready, null, { timeout });
  await page.evaluate(() => window.onnxGradcam.ready);
  const loadError = await page.evaluate(() => window.onnxGradcam.error);
  if (loadError) throw new Error(`the page could not load the model: ${loadError}`);
  await page.setInputFiles('#image-file', values.image);
  await page.waitForFunction(() => window.onnxGradcam.last || window.onnxGradcam.error, null, { timeout });
  Object.assign(report, await page.evaluate(() => {
    const { last, error } = window.onnxGradcam;
    if (error) return { error };
    return { cam: Array.from(last.cam), camDims: last.camDims, target: last.target,
             top: last.top, milliseconds: last.milliseconds,
             status: document.getElementById('status').textContent };
  }));
  if (values.screenshot) await page.screenshot({ path: values.screenshot, fullPage: true });
} catch (err) {
  report.error = err.message;
} finally {
  await browser.close();
}
writeFileSync(values.out, JSON.stringify(report));
if (report.error) {
  console.error(`error: ${report.error}`);
  process.exit(1);
}

// Uppy (its browser bundle, with the Tus plugin) uploading to pytusd in headless Chromium: paused mid-way, resumed,
// finished. The test page and uppy.min.js are served by page.route() from node_modules, never by pytusd, at a path
// of pytusd's origin (so the upload endpoint is same-origin). Prints one JSON object for tests/e2e/test_browser.py.
//
//   node uppy.mjs <endpoint-url> <file> <artifacts-dir>
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { launch, serverOffset, throttleUploads, until, watch } from './lib.mjs';

const [endpoint, file, artifacts] = process.argv.slice(2);
const origin = new URL(endpoint).origin;
const testRoot = `${origin}/__uppy_test__/`;
const bundle = fs.readFileSync(createRequire(import.meta.url).resolve('uppy/dist/uppy.min.js'));
const html = `<!doctype html>
<meta charset="utf-8">
<title>Uppy → pytusd</title>
<label>File <input id="files" type="file"></label>
<pre id="log"></pre>
<script src="uppy.min.js"></script>
<script>
  const { Uppy, Tus } = window.Uppy;
  const uppy = new Uppy({ autoProceed: false })
    .use(Tus, { endpoint: ${JSON.stringify(endpoint)}, chunkSize: 4 * 1024 * 1024, retryDelays: [0, 500, 1000] });
  window.state = { progress: 0, total: 0, url: null, errors: [], version: Uppy.VERSION };
  uppy.on('upload-progress', (file, progress) => {
    window.state.progress = progress.bytesUploaded;
    window.state.total = progress.bytesTotal;
  });
  uppy.on('upload-success', (file, response) => { window.state.url = response.uploadURL; });
  uppy.on('upload-error', (file, error) => window.state.errors.push(String(error)));
  uppy.on('complete', (result) => {
    window.state.complete = { successful: result.successful.length, failed: result.failed.length };
    document.getElementById('log').textContent = 'complete: ' + JSON.stringify(window.state);
  });
  document.getElementById('files').addEventListener('change', (event) => {
    for (const f of event.target.files) {
      window.fileId = uppy.addFile({ name: f.name, type: f.type, data: f, source: 'input' });
    }
    uppy.upload();
  });
  window.uppy = uppy;
</script>`;

const browser = await launch();
try {
  const page = await (await browser.newContext()).newPage();
  const seen = watch(page, origin);
  await page.route(`${testRoot}**`, (route) => {
    const name = new URL(route.request().url()).pathname.slice('/__uppy_test__/'.length);
    if (name === '') return route.fulfill({ contentType: 'text/html; charset=utf-8', body: html });
    if (name === 'uppy.min.js') return route.fulfill({ contentType: 'text/javascript', body: bundle });
    return route.fulfill({ status: 404, body: 'not here' });
  });
  await page.goto(testRoot);
  await throttleUploads(page, 12 * 1024 * 1024);
  const state = () => page.evaluate(() => window.state);

  await page.setInputFiles('#files', file);
  await until('Uppy at 30 %', async () => {
    const s = await state();
    return s.total > 0 && s.progress >= s.total * 0.3;
  });
  const pausedNow = await page.evaluate(() => window.uppy.pauseResume(window.fileId));
  const paused = await state();
  await page.waitForTimeout(500);
  const progressAfterPause = (await state()).progress; // no progress while paused
  const uploadUrl = await page.evaluate(() => window.uppy.getFile(window.fileId).tus?.uploadUrl ?? null);
  const offsetAtPause = uploadUrl ? await serverOffset(uploadUrl) : null;
  await page.evaluate(() => window.uppy.pauseResume(window.fileId));
  await until('Uppy complete', async () => (await state()).complete, 30_000);
  await page.screenshot({ path: path.join(artifacts, 'uppy.png') });
  const result = { pausedNow, pausedAt: paused.progress, progressAfterPause, uploadUrl, offsetAtPause };
  console.log(JSON.stringify({ ...result, ...(await state()), ...seen }));
} finally {
  await browser.close();
}

// pytusd's own upload page in headless Chromium: two files, one paused mid-way, the page reloaded, the file chosen
// again and resumed from the server's offset; both finish. Prints one JSON object for tests/e2e/test_browser.py.
//
//   node upload-page.mjs <page-url> <big-file> <small-file> <artifacts-dir> [--docs-screenshot PATH]
import path from 'node:path';
import { launch, option, serverOffset, throttleUploads, until, watch } from './lib.mjs';

const [pageUrl, bigFile, smallFile, artifacts, ...rest] = process.argv.slice(2);
const docsScreenshot = option(rest, '--docs-screenshot');
const origin = new URL(pageUrl).origin;
const [bigName, smallName] = [path.basename(bigFile), path.basename(smallFile)];

const browser = await launch();
try {
  const context = await browser.newContext({ viewport: { width: 760, height: 520 } });
  const page = await context.newPage();
  const seen = watch(page, origin);
  const response = await page.goto(pageUrl);
  const headers = response.headers();
  await throttleUploads(page, 12 * 1024 * 1024);

  const row = (name) => page.locator('.upload', { has: page.locator('.name', { hasText: name }) });
  const state = (name) => row(name).getAttribute('data-state');
  const fraction = (name) => row(name).locator('progress').evaluate((p) => p.value / p.max);

  await page.setInputFiles('#files', [bigFile, smallFile]);
  // The small file is done while the big one is on its way (about 15 %): the picture for the README.
  await until(`${smallName} done`, async () => (await state(smallName)) === 'done');
  const statusWhileUploading = await row(bigName).locator('.status').innerText();
  await page.screenshot({ path: path.join(artifacts, 'upload-page-progress.png') });
  if (docsScreenshot) await page.screenshot({ path: docsScreenshot });
  await until(`${bigName} at 30 %`, async () => (await fraction(bigName)) >= 0.3);
  await page.getByRole('button', { name: `Pause ${bigName}` }).click();
  const pausedAtFraction = await fraction(bigName);
  await until(`${bigName} paused`, async () => (await state(bigName)) === 'paused');
  const bigUrl = await row(bigName).getAttribute('data-url');
  const smallUrl = await row(smallName).getAttribute('data-url');
  const smallDownload = await row(smallName).getByRole('link', { name: `Download ${smallName}` }).getAttribute('href');
  const statusWhilePaused = await row(bigName).locator('.status').innerText();
  await page.waitForTimeout(300); // the server notices the aborted PATCH and stores what it got
  const offsetAtPause = await serverOffset(bigUrl);
  await page.screenshot({ path: path.join(artifacts, 'upload-page-paused.png') });

  // A reload: the page lists the unfinished upload; choosing the same file again resumes it. Its first PATCH then
  // gets a 503 (from page.route, never reaching pytusd): the client retries, asking the server's offset again.
  await page.reload();
  const unfinished = await page.locator('#unfinished-list').innerText();
  let failedPatches = 0;
  await page.route(bigUrl, async (route) => {
    if (route.request().method() !== 'PATCH' || failedPatches > 0) return route.continue();
    failedPatches++;
    await route.fulfill({ status: 503, body: 'try again later' });
    await page.unroute(bigUrl);
  });
  await page.setInputFiles('#files', [bigFile]);
  await until(`${bigName} done after the reload`, async () => (await state(bigName)) === 'done', 30_000);
  const resumedFrom = Number(await row(bigName).getAttribute('data-resumed-from'));
  const bigUrlAfter = await row(bigName).getAttribute('data-url');
  const statusDone = await row(bigName).locator('.status').innerText();
  const bigDownload = await row(bigName).getByRole('link', { name: `Download ${bigName}` }).getAttribute('href');
  const unfinishedAfter = await page.locator('#unfinished').isVisible();
  await page.screenshot({ path: path.join(artifacts, 'upload-page.png') });

  console.log(
    JSON.stringify({
      headers,
      statusWhileUploading,
      pausedAtFraction,
      statusWhilePaused,
      statusDone,
      offsetAtPause,
      unfinished,
      resumedFrom,
      failedPatches,
      unfinishedAfter,
      urls: { [bigName]: bigUrl, [smallName]: smallUrl },
      bigUrlAfter,
      downloads: { [bigName]: bigDownload, [smallName]: smallDownload },
      storage: await page.evaluate(() => Object.keys(localStorage)),
      ...seen,
    }),
  );
} finally {
  await browser.close();
}

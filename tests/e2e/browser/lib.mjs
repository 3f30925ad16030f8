// Shared by the browser scripts: the Debian Chromium (never a downloaded one), upload throttling, small waits.
import { chromium } from 'playwright-core';

export const CHROMIUM = process.env.PYTUSD_CHROMIUM || '/usr/bin/chromium';
const ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
];

export async function launch() {
  return chromium.launch({ executablePath: CHROMIUM, args: ARGS, headless: true, timeout: 30_000 });
}

/** Slow the page's uploads down (DevTools network emulation), so that "pause mid-way" is not a race. */
export async function throttleUploads(page, bytesPerSecond) {
  const cdp = await page.context().newCDPSession(page);
  await cdp.send('Network.enable');
  await cdp.send('Network.emulateNetworkConditions', {
    offline: false,
    latency: 0,
    downloadThroughput: -1,
    uploadThroughput: bytesPerSecond,
  });
  return cdp;
}

/** Wait until fn() (in Node) returns something truthy; return it. */
export async function until(what, fn, timeoutMs = 20_000, intervalMs = 25) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await fn();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}

/** The server's Upload-Offset of an upload (a HEAD from Node, not from the page). */
export async function serverOffset(url) {
  const response = await fetch(url, { method: 'HEAD', headers: { 'Tus-Resumable': '1.0.0' } });
  if (!response.ok) throw new Error(`HEAD ${url}: ${response.status}`);
  return Number(response.headers.get('upload-offset'));
}

/** Collect what the page does that it should not: requests to other origins, console errors, page errors. */
export function watch(page, origin) {
  const seen = { requests: [], foreign: [], errors: [] };
  page.on('request', (request) => {
    seen.requests.push(`${request.method()} ${request.url()}`);
    if (!request.url().startsWith(origin) && !request.url().startsWith('data:')) seen.foreign.push(request.url());
  });
  page.on('console', (message) => {
    if (message.type() === 'error') seen.errors.push(message.text());
  });
  page.on('pageerror', (error) => seen.errors.push(String(error)));
  return seen;
}

export function option(args, name, fallback = null) {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : fallback;
}

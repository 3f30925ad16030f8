// A small tus 1.0 client for pytusd's upload page: no dependencies, no build step.
//
//   const upload = new TusUpload(file, { endpoint: '/files/', onProgress(sent, total) {}, onSuccess(url) {} });
//   upload.start();   // creates the upload (or finds it again, see below) and sends it in chunked PATCHes
//   upload.pause();   // aborts the running request; the server keeps what it received
//   upload.start();   // asks the server for its offset (HEAD) and goes on from there
//
// Resuming across page loads: the upload URL is kept in localStorage under a fingerprint of the endpoint and the
// file's name, size and lastModified. A new TusUpload for the same file finds it, and start() continues at the
// server's offset instead of creating a new upload. Network errors, 5xx, 409 and 423 are retried with backoff.

export const TUS_VERSION = '1.0.0';
const KEY_PREFIX = 'pytusd:upload:';

export class TusError extends Error {
  constructor(message, status = 0, { aborted = false } = {}) {
    super(message);
    this.name = 'TusError';
    this.status = status;
    this.aborted = aborted;
  }

  get retryable() {
    return !this.aborted && (this.status === 0 || this.status === 409 || this.status === 423 || this.status >= 500);
  }
}

export function fingerprint(file, endpoint) {
  return `${KEY_PREFIX}${endpoint}|${file.name}|${file.size}|${file.lastModified}`;
}

/** Uploads of an earlier visit that did not finish: [{key, url, name, size, created}], oldest first. */
export function storedUploads(endpoint, storage = localStorage) {
  const found = [];
  for (let i = 0; i < storage.length; i++) {
    const key = storage.key(i);
    if (!key?.startsWith(`${KEY_PREFIX}${endpoint}|`)) continue;
    try {
      found.push({ key, ...JSON.parse(storage.getItem(key)) });
    } catch {
      storage.removeItem(key);
    }
  }
  return found.sort((a, b) => a.created - b.created);
}

function base64(text) {
  let binary = '';
  for (const byte of new TextEncoder().encode(text)) binary += String.fromCharCode(byte);
  return btoa(binary);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export class TusUpload {
  constructor(file, options) {
    this.file = file;
    this.options = {
      chunkSize: 8 * 1024 * 1024,
      retryDelays: [0, 1000, 3000, 5000, 10000],
      metadata: { filename: file.name, filetype: file.type || 'application/octet-stream' },
      storage: globalThis.localStorage,
      ...options,
    };
    this.endpoint = new URL(this.options.endpoint, location.href).href;
    this.key = fingerprint(file, this.endpoint);
    this.url = null;
    this.offset = 0;
    this.resumedFrom = null; // the server's offset when an upload of an earlier visit was found again
    this.running = false;
    this.run = 0; // incremented by pause(): a loop of an earlier run stops at its next check
    this.xhr = null;
  }

  async start() {
    if (this.running) return;
    const run = ++this.run;
    this.running = true;
    let failures = 0;
    let synced = false; // the offset is the server's (HEAD or the last PATCH), not a guess
    try {
      while (this.offset < this.file.size || !synced) {
        try {
          if (!synced) await this.#locate();
          synced = true;
          if (this.offset >= this.file.size) break;
          await this.#patch();
          failures = 0;
        } catch (error) {
          if (run !== this.run) return; // paused
          const delay = this.options.retryDelays[failures++];
          if (!(error instanceof TusError && error.retryable) || delay === undefined) throw error;
          this.options.onRetry?.(error, delay, failures);
          await sleep(delay);
          if (run !== this.run) return;
          synced = false; // the server may have stored part of the failed request: ask for its offset again
        }
      }
      this.running = false;
      this.#forget();
      this.options.onSuccess?.(this.url);
    } catch (error) {
      if (run !== this.run) return;
      this.running = false;
      this.options.onError?.(error);
    }
  }

  pause() {
    if (!this.running) return;
    this.run++;
    this.running = false;
    this.xhr?.abort();
  }

  /** Find the upload on the server (stored URL + HEAD) or create it (POST); sets url and offset. */
  async #locate() {
    const stored = this.url ? null : this.#stored();
    const url = this.url ?? stored?.url;
    if (url) {
      const response = await this.#send('HEAD', url);
      const offset = Number.parseInt(response.header('Upload-Offset'), 10);
      const length = response.header('Upload-Length');
      const sameFile = length === null || Number(length) === this.file.size;
      if (response.status >= 200 && response.status < 300 && offset >= 0 && sameFile) {
        this.url = url;
        this.offset = offset;
        if (stored) this.resumedFrom = offset;
        this.options.onLocated?.({ url, offset, resumed: Boolean(stored) });
        this.options.onProgress?.(offset, this.file.size);
        return;
      }
      if (response.status === 0 || response.status === 423 || response.status >= 500) {
        throw new TusError(`HEAD ${url} answered ${response.status}`, response.status);
      }
      this.#forget(); // gone (404, 410) or not this file any more: start a new upload
      this.url = null;
    }
    const metadata = Object.entries(this.options.metadata).map(([key, value]) => `${key} ${base64(String(value))}`);
    const response = await this.#send('POST', this.endpoint, {
      'Upload-Length': String(this.file.size),
      'Upload-Metadata': metadata.join(','),
    });
    const location = response.header('Location');
    if (response.status !== 201 || !location) {
      throw new TusError(`creating the upload failed: ${response.status} ${response.text.trim()}`, response.status);
    }
    this.url = new URL(location, this.endpoint).href;
    this.offset = 0;
    this.options.storage?.setItem(
      this.key,
      JSON.stringify({ url: this.url, name: this.file.name, size: this.file.size, created: Date.now() }),
    );
    this.options.onLocated?.({ url: this.url, offset: 0, resumed: false });
  }

  async #patch() {
    const start = this.offset;
    const end = Math.min(start + this.options.chunkSize, this.file.size);
    const response = await this.#send(
      'PATCH',
      this.url,
      { 'Upload-Offset': String(start), 'Content-Type': 'application/offset+octet-stream' },
      this.file.slice(start, end),
      (sent) => this.options.onProgress?.(start + sent, this.file.size),
    );
    const offset = Number.parseInt(response.header('Upload-Offset'), 10);
    if (response.status === 204 && offset > start && offset <= this.file.size) {
      this.offset = offset;
      this.options.onProgress?.(offset, this.file.size);
      return;
    }
    if (response.status === 404 || response.status === 410) this.#forget();
    throw new TusError(`PATCH answered ${response.status} ${response.text.trim()}`, response.status);
  }

  #send(method, url, headers = {}, body = null, onProgress = null) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      this.xhr = xhr;
      xhr.open(method, url);
      xhr.setRequestHeader('Tus-Resumable', TUS_VERSION);
      for (const [name, value] of Object.entries(headers)) xhr.setRequestHeader(name, value);
      if (onProgress) xhr.upload.onprogress = (event) => onProgress(event.loaded);
      xhr.onload = () =>
        resolve({ status: xhr.status, header: (name) => xhr.getResponseHeader(name), text: xhr.responseText });
      xhr.onerror = () => reject(new TusError(`${method} failed: network error`));
      xhr.onabort = () => reject(new TusError(`${method} aborted`, 0, { aborted: true }));
      xhr.send(body);
    });
  }

  #stored() {
    try {
      return JSON.parse(this.options.storage?.getItem(this.key) ?? 'null');
    } catch {
      return null;
    }
  }

  #forget() {
    this.options.storage?.removeItem(this.key);
  }
}

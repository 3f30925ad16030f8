// pytusd's upload page: choose or drop files, one row per upload with progress, speed, time left, pause/resume and
// a download link when done. The tus protocol itself is in tus.js.
import { TusUpload, storedUploads } from './tus.js';

const main = document.querySelector('main');
const endpoint = new URL(main.dataset.endpoint, location.href).href;
const downloads = main.dataset.downloads === 'true';
const maxSize = Number(main.dataset.maxSize) || 0;
const input = document.getElementById('files');
const drop = document.getElementById('drop');
const list = document.getElementById('uploads');
const rows = new Map(); // fingerprint -> row of this page view

function formatBytes(bytes) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (bytes >= 1024 && i < units.length - 1) {
    bytes /= 1024;
    i++;
  }
  return `${i === 0 ? bytes : bytes.toFixed(1)} ${units[i]}`;
}

function formatDuration(seconds) {
  if (!Number.isFinite(seconds)) return '…';
  const s = Math.max(1, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

/** Bytes per second over the last few seconds of progress events. */
class Speedometer {
  samples = [];

  add(bytes) {
    const now = performance.now();
    this.samples.push([now, bytes]);
    while (this.samples.length > 2 && now - this.samples[0][0] > 5000) this.samples.shift();
  }

  get rate() {
    if (this.samples.length < 2) return 0;
    const [[t0, b0], [t1, b1]] = [this.samples[0], this.samples[this.samples.length - 1]];
    return t1 > t0 ? ((b1 - b0) * 1000) / (t1 - t0) : 0;
  }

  reset() {
    this.samples = [];
  }
}

function addFile(file) {
  const upload = new TusUpload(file, { endpoint });
  const existing = rows.get(upload.key);
  if (existing) {
    if (!existing.upload.running && existing.element.dataset.state !== 'done') existing.resume();
    return;
  }
  const element = document.getElementById('upload-row').content.firstElementChild.cloneNode(true);
  const $ = (selector) => element.querySelector(selector);
  const [progress, status, toggle, link] = [$('progress'), $('.status'), $('.toggle'), $('.download')];
  $('.name').textContent = file.name;
  $('.size').textContent = formatBytes(file.size);
  progress.max = Math.max(file.size, 1);
  progress.setAttribute('aria-label', `Progress of ${file.name}`);
  toggle.setAttribute('aria-label', `Pause ${file.name}`);
  list.append(element);

  const speed = new Speedometer();
  const setState = (state, text) => {
    element.dataset.state = state;
    status.textContent = text;
    const paused = state === 'paused' || state === 'error';
    toggle.textContent = paused ? 'Resume' : 'Pause';
    toggle.setAttribute('aria-label', `${paused ? 'Resume' : 'Pause'} ${file.name}`);
    toggle.hidden = state === 'done';
  };
  const row = {
    upload,
    element,
    resume() {
      speed.reset();
      setState('uploading', 'Connecting…');
      upload.start();
    },
  };
  rows.set(upload.key, row);

  Object.assign(upload.options, {
    onLocated({ url, offset, resumed }) {
      element.dataset.url = url;
      if (resumed) {
        element.dataset.resumedFrom = String(offset);
        setState('uploading', `Resuming at ${formatBytes(offset)}`);
      }
    },
    onProgress(sent, total) {
      progress.value = sent;
      speed.add(sent);
      if (!upload.running || speed.samples.length < 2) return; // keep "Connecting…" or "Resuming at …" a moment
      const rate = speed.rate;
      const percent = total ? Math.floor((sent / total) * 100) : 100;
      const left = rate > 0 ? formatDuration((total - sent) / rate) : '…';
      setState('uploading', `${percent} % · ${formatBytes(rate)}/s · ${left} left`);
    },
    onRetry(error, delay) {
      setState('uploading', `${error.message}; retrying in ${formatDuration(delay / 1000)}`);
    },
    onSuccess(url) {
      progress.value = progress.max;
      const resumed = upload.resumedFrom ? ` · resumed at ${formatBytes(upload.resumedFrom)}` : '';
      setState('done', `Done · ${formatBytes(file.size)}${resumed}`);
      if (downloads) {
        link.href = url;
        link.hidden = false;
        link.setAttribute('aria-label', `Download ${file.name}`);
      }
      showUnfinished();
    },
    onError(error) {
      setState('error', error.message);
    },
  });

  toggle.addEventListener('click', () => {
    if (upload.running) {
      upload.pause();
      setState('paused', `Paused at ${Math.floor((progress.value / progress.max) * 100)} %`);
    } else {
      row.resume();
    }
  });

  if (maxSize && file.size > maxSize) {
    setState('error', `Too large: this server takes at most ${formatBytes(maxSize)}`);
    return;
  }
  row.resume();
  showUnfinished();
}

/** Uploads of an earlier visit that did not finish, with a way to forget them. */
function showUnfinished() {
  const section = document.getElementById('unfinished');
  const ul = document.getElementById('unfinished-list');
  const listed = new Set(rows.keys());
  const items = storedUploads(endpoint).filter(({ key }) => !listed.has(key));
  ul.replaceChildren(
    ...items.map(({ key, name, size }) => {
      const li = document.createElement('li');
      const label = document.createElement('span');
      label.textContent = `${name} (${formatBytes(size)})`;
      const forget = document.createElement('button');
      forget.type = 'button';
      forget.textContent = 'Forget';
      forget.setAttribute('aria-label', `Forget ${name}`);
      forget.addEventListener('click', () => {
        localStorage.removeItem(key);
        showUnfinished();
      });
      li.append(label, forget);
      return li;
    }),
  );
  section.hidden = items.length === 0;
}

input.addEventListener('change', () => {
  for (const file of input.files) addFile(file);
  input.value = '';
});
// Files dropped anywhere on the page are uploaded (rather than opened by the browser).
for (const type of ['dragenter', 'dragover']) {
  document.addEventListener(type, (event) => {
    event.preventDefault();
    drop.classList.add('over');
  });
}
document.addEventListener('dragleave', (event) => {
  if (!event.relatedTarget) drop.classList.remove('over');
});
document.addEventListener('drop', (event) => {
  event.preventDefault();
  drop.classList.remove('over');
  for (const file of event.dataTransfer.files) addFile(file);
});
showUnfinished();

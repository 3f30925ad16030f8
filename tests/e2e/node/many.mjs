// Upload several files at once with tus-js-client, retrying through server failures.
//
//   node many.mjs <endpoint> <chunk-size> <file>...
//
// Prints one line per progress step ({"progress": bytes sent in all, "total": ...}) so that a test can act
// mid-way (kill a server), and at the end {"done": [{"file": ..., "url": ...}, ...]}. A failed upload exits 1.
import fs from 'node:fs';
import * as tus from 'tus-js-client';

const [endpoint, chunkArg, ...files] = process.argv.slice(2);
const chunkSize = Number(chunkArg);
const sizes = files.map((f) => fs.statSync(f).size);
const total = sizes.reduce((a, b) => a + b, 0);
const sent = files.map(() => 0);
let lastReport = 0;

function upload(file, index) {
  return new Promise((resolve, reject) => {
    const u = new tus.Upload(fs.createReadStream(file), {
      endpoint,
      chunkSize,
      uploadSize: sizes[index],
      // Long enough to outlast a killed server: its locks expire, another process takes over.
      retryDelays: [0, 250, 500, 1000, 2000, 3000, 5000, 5000, 5000, 5000],
      metadata: { filename: file.split('/').pop(), filetype: 'application/octet-stream' },
      onProgress(bytes) {
        sent[index] = bytes;
        const all = sent.reduce((a, b) => a + b, 0);
        if (all - lastReport >= total / 100 || all === total) {
          lastReport = all;
          console.log(JSON.stringify({ progress: all, total }));
        }
      },
      onSuccess() { resolve({ file, url: u.url }); },
      onError: reject,
    });
    u.start();
  });
}

try {
  const done = await Promise.all(files.map(upload));
  console.log(JSON.stringify({ done }));
} catch (err) {
  console.error(String(err));
  process.exit(1);
}

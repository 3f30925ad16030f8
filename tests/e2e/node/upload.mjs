// Upload a file to a tus server with tus-js-client (Node), optionally stopping part-way.
//
//   node upload.mjs <endpoint> <file> <url-storage.json> [--stop-at FRACTION] [--chunk-size BYTES] [--parallel N]
//
// With --stop-at the upload is aborted once that fraction of the file was sent (mid-request when the chunk size is
// large), and the script prints {"stopped": true, "url": ...}. Run it again with the same url-storage file and
// without --stop-at: it finds the earlier upload, asks the server for its offset and resumes from there.
import fs from 'node:fs';
import * as tus from 'tus-js-client';

const [endpoint, filePath, storagePath, ...rest] = process.argv.slice(2);
const option = (name, fallback) => {
  const i = rest.indexOf(name);
  return i >= 0 ? Number(rest[i + 1]) : fallback;
};
const stopAt = option('--stop-at', null);
const chunkSize = option('--chunk-size', Infinity);
const parallelUploads = option('--parallel', 1);  // > 1 uses the concatenation extension

const result = await new Promise((resolve, reject) => {
  const size = fs.statSync(filePath).size;
  let stopped = false;
  let resumedFrom = null;
  const upload = new tus.Upload(fs.createReadStream(filePath), {
    endpoint,
    chunkSize,
    parallelUploads,
    ...(parallelUploads > 1 ? {} : { uploadSize: size }),
    retryDelays: [0, 200, 500],
    metadata: { filename: 'e2e.bin', filetype: 'application/octet-stream' },
    urlStorage: new tus.FileUrlStorage(storagePath),
    removeFingerprintOnSuccess: false,
    onProgress(sent, total) {
      if (stopAt !== null && !stopped && sent >= total * stopAt) {
        stopped = true;
        upload.abort().then(() => resolve({ stopped: true, url: upload.url, sent }), reject);
      }
    },
    onSuccess() {
      resolve({ stopped: false, url: upload.url, resumedFrom });
    },
    onError: reject,
  });
  upload.findPreviousUploads().then((previous) => {
    if (previous.length > 0 && stopAt === null) {
      resumedFrom = previous[0].uploadUrl;
      upload.resumeFromPreviousUpload(previous[0]);
    }
    upload.start();
  }, reject);
});
console.log(JSON.stringify(result));

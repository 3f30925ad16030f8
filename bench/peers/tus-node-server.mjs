// Peer server for the pytusd benchmark: @tus/server with its FileStore, nothing else.
//
//   node tus-node-server.mjs <upload-dir> [port]
//
// The port may also come from the environment (PORT); the default is 1080.
// It listens on 127.0.0.1 only and serves uploads under /files. SIGTERM/SIGINT close it.
import http from 'node:http';
import path from 'node:path';
import process from 'node:process';

import { Server } from '@tus/server';
import { FileStore } from '@tus/file-store';

function usage(message) {
  if (message) console.error(`tus-node-server: ${message}`);
  console.error('usage: node tus-node-server.mjs <upload-dir> [port]   (or PORT in the environment)');
  process.exit(2);
}

const [dirArg, portArg] = process.argv.slice(2);
if (!dirArg) usage('missing upload directory');
const directory = path.resolve(dirArg);
const port = Number.parseInt(portArg ?? process.env.PORT ?? '1080', 10);
if (!Number.isInteger(port) || port < 0 || port > 65535) usage(`bad port ${portArg ?? process.env.PORT}`);
const host = '127.0.0.1';

const tus = new Server({
  path: '/files',
  datastore: new FileStore({ directory }),
});

const httpServer = http.createServer((req, res) => {
  tus.handle(req, res);
});
// A 1 GiB PATCH must not be cut off by Node's default 5-minute request timeout on a slow machine.
httpServer.requestTimeout = 0;

httpServer.listen(port, host, () => {
  const address = httpServer.address();
  console.log(`@tus/server listening on http://${host}:${address.port}/files (dir ${directory})`);
});

let closing = false;
function shutdown(signal) {
  if (closing) return;
  closing = true;
  console.log(`tus-node-server: ${signal}, closing`);
  httpServer.close(() => process.exit(0));
  httpServer.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));

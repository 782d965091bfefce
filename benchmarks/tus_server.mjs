// The http case's tus peer server: @tus/server with its FileStore, as its README shows,
// behind node's own http.createServer on 127.0.0.1.
//
// The harness copies this file into its node folder (benchmarks/work/node), where npm
// installed @tus/server and @tus/file-store, so the imports resolve there.
//
//   node tus_server.mjs PORT DIRECTORY
import http from "node:http";

import { FileStore } from "@tus/file-store";
import { Server } from "@tus/server";

const [port, directory] = process.argv.slice(2);
if (!port || !directory) {
  console.error("usage: node tus_server.mjs PORT DIRECTORY");
  process.exit(2);
}

const tus = new Server({ path: "/files", datastore: new FileStore({ directory }) });
const server = http.createServer((req, res) => tus.handle(req, res));
server.listen(Number(port), "127.0.0.1", () => {
  console.log(`@tus/server listening on http://127.0.0.1:${port}/files, storing in ${directory}`);
});

for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => server.close(() => process.exit(0)));
}

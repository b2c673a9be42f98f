// Identity over the `arrow` protocol of `kind: command` processors (docs/processors.md). stdin carries Arrow IPC
// streams back to back: first the args (one row, one utf8 column `args` holding JSON), then one stream per batch.
// Each batch is answered on stdout by exactly one stream (schema, record batches, end-of-stream marker). Record
// batches are answered as they arrive, so the runner reads the answer while the rest of the batch comes in.
// Needs `apache-arrow`, installed into this folder by `.ci/run` (npm ci --prefix processors/node).
import { once } from 'node:events';
import { RecordBatchReader, RecordBatchStreamWriter } from 'apache-arrow';

let args = null;
for await (const reader of RecordBatchReader.readAll(process.stdin)) {
  if (args === null) { // the first stream: the args as JSON text
    for await (const batch of reader) args ??= JSON.parse(batch.getChild('args').get(0));
    continue;
  }
  const writer = new RecordBatchStreamWriter();
  const sent = (async () => {
    for await (const bytes of writer) if (!process.stdout.write(bytes)) await once(process.stdout, 'drain');
  })();
  writer.reset(undefined, reader.schema); // the schema message, even for an answer without rows
  for await (const batch of reader) writer.write(batch); // a real processor changes the batch here
  writer.close(); // the end-of-stream marker, and the end of this answer
  await sent;
}

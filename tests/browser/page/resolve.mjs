// node resolve.mjs <map file> <line> <column>: the original position of a generated one
// (line 1-based, column 1-based as in stack traces), as JSON.
import { readFileSync } from "node:fs";
import { SourceMapConsumer } from "source-map";

const [mapFile, line, column] = process.argv.slice(2);
const raw = JSON.parse(readFileSync(mapFile, "utf8"));
const position = await SourceMapConsumer.with(raw, null, (consumer) =>
  consumer.originalPositionFor({ line: Number(line), column: Number(column) - 1 }),
);
console.log(JSON.stringify(position));

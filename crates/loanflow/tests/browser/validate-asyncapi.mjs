// Validates an AsyncAPI document with AsyncAPI's own parser (its JSON Schemas and
// rules); prints every diagnostic and fails on any error. Run by ../deployment.rs.
import { Parser } from "@asyncapi/parser";
import { readFileSync } from "node:fs";

const { document, diagnostics } = await new Parser().parse(readFileSync(process.argv[2], "utf8"));
const severities = ["error", "warning", "info", "hint"];
for (const d of diagnostics) {
  console.log(`${severities[d.severity] ?? d.severity}: ${d.code}: ${d.message} at ${d.path.join(".")}`);
}
process.exit(!document || diagnostics.some((d) => d.severity === 0) ? 1 : 0);

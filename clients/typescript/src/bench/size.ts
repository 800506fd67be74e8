/** The browser bundle's size (esbuild, minified): raw and gzipped with node's zlib at level 9. Run `npm run size`. */
import { readFileSync } from "node:fs";
import { gzipSync } from "node:zlib";

const bundle = readFileSync(new URL("../privllm.bundle.js", import.meta.url));
console.log(`dist/privllm.bundle.js: ${bundle.length} bytes minified, ${gzipSync(bundle, { level: 9 }).length} bytes gzipped`);

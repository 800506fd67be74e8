/** Compile-time checks: the platform's own classes fit the options (tsc fails otherwise). */
import { test } from "node:test";
import type { ClientOptions } from "../index.js";

test("the DOM's XMLHttpRequest and fetch fit ClientOptions", () => {
  const options = (Xhr: typeof XMLHttpRequest): Partial<ClientOptions> => ({ XMLHttpRequest: Xhr, fetch });
  void options;
});

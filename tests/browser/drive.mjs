// Open one page in headless Chromium (Debian's, given by path: puppeteer-core downloads none), wait
// until it shows "done" or "error", and print what it showed as one JSON line.
// Usage: node drive.mjs CHROMIUM URL PROFILE_DIR TIMEOUT_MS
import puppeteer from "puppeteer-core";

const [executablePath, url, userDataDir, timeoutText] = process.argv.slice(2);
const timeout = Number(timeoutText);
const browser = await puppeteer.launch({
  executablePath,
  headless: true, // Chromium's new headless mode, --headless=new
  // --no-sandbox: the tests run as root. --ignore-certificate-errors: the dev router's certificate
  // is self-signed; Chromium honours the flag only with a --user-data-dir of its own.
  args: ["--no-sandbox", "--ignore-certificate-errors"],
  userDataDir,
  pipe: true,
  timeout,
  protocolTimeout: timeout,
});
try {
  const page = await browser.newPage();
  const logs = [];
  page.on("console", (message) => logs.push(message.text()));
  page.on("pageerror", (error) => logs.push(String(error)));
  await page.goto(url, { timeout });
  await page
    .waitForFunction(() => ["done", "error"].includes(document.getElementById("status").textContent), { timeout })
    .catch(() => {}); // the test sees the status it stopped at
  const shown = await page.evaluate(() => {
    const text = (id) => document.getElementById(id).textContent;
    return { status: text("status"), deltas: Number(text("deltas")), answer: text("answer"), error: text("error") };
  });
  process.stdout.write(JSON.stringify({ ...shown, logs }) + "\n");
} finally {
  await browser.close();
}

// Walks the edge's sign-in pages in Debian's headless Chromium, as a person would:
// open the app, get sent to the e-mail form, type the address, read the one-time code from
// the SMTP sink's API, type it, land on the app. A screenshot of every page is kept.
//
// Environment: EDGE_URL (https://media.test:PORT/some/path), EDGE_ADDRESS (127.0.0.1:PORT,
// where media.test resolves), CLIENT_IP (sent as X-Forwarded-For: the test browser stands
// behind a trusted proxy hop), EMAIL, MAILPIT_API (http://127.0.0.1:PORT), SCREENSHOTS (a
// directory), CHROMIUM (default /usr/bin/chromium). Prints one JSON line with what it saw;
// exits non-zero on any failure.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";

const env = (name, fallback) => {
  const value = process.env[name] ?? fallback;
  if (value === undefined) throw new Error(`${name} is not set`);
  return value;
};

const edgeUrl = new URL(env("EDGE_URL"));
const email = env("EMAIL");
const mailpit = env("MAILPIT_API");
const shots = env("SCREENSHOTS");
mkdirSync(shots, { recursive: true });

async function mailCount() {
  const response = await fetch(`${mailpit}/api/v1/search?query=${encodeURIComponent(`to:${email}`)}`);
  return (await response.json()).messages?.length ?? 0;
}

async function newestCode(before) {
  const deadline = Date.now() + 15000;
  while (Date.now() < deadline) {
    const found = await (
      await fetch(`${mailpit}/api/v1/search?query=${encodeURIComponent(`to:${email}`)}`)
    ).json();
    if ((found.messages?.length ?? 0) > before) {
      const message = await (await fetch(`${mailpit}/api/v1/message/${found.messages[0].ID}`)).json();
      const code = message.Text.match(/\b(\d{6,10})\b/);
      if (code) return code[1];
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  throw new Error(`no code reached ${email}`);
}

const browser = await chromium.launch({
  executablePath: env("CHROMIUM", "/usr/bin/chromium"),
  args: [`--host-resolver-rules=MAP ${edgeUrl.hostname} ${env("EDGE_ADDRESS").split(":")[0]}`],
});
const seen = {};
try {
  // A phone-sized screen: the pages must be usable there.
  const context = await browser.newContext({
    ignoreHTTPSErrors: true,
    viewport: { width: 390, height: 844 },
    extraHTTPHeaders: { "X-Forwarded-For": env("CLIENT_IP") },
  });
  const page = await context.newPage();
  const before = await mailCount();

  await page.goto(edgeUrl.href);
  seen.loginUrl = page.url();
  seen.loginTitle = await page.title();
  await page.screenshot({ path: `${shots}/1-email-form.png`, fullPage: true });

  await page.fill("#email", email);
  await Promise.all([page.waitForURL(/\/\.portcullis\/code/), page.click("button[type=submit]")]);
  seen.codeUrl = page.url();
  seen.codeText = await page.locator("main p").first().innerText();
  await page.screenshot({ path: `${shots}/2-code-form.png`, fullPage: true });

  const code = await newestCode(before);
  await page.fill("#code", code);
  await Promise.all([
    page.waitForURL((url) => !url.pathname.startsWith("/.portcullis/")),
    page.click("button[type=submit]"),
  ]);
  seen.appUrl = page.url();
  seen.appBody = await page.locator("body").innerText();
  await page.screenshot({ path: `${shots}/3-app.png`, fullPage: true });
  seen.cookies = (await context.cookies()).map((c) => ({
    name: c.name,
    httpOnly: c.httpOnly,
    secure: c.secure,
    sameSite: c.sameSite,
  }));
} finally {
  await browser.close();
}
console.log(JSON.stringify(seen));

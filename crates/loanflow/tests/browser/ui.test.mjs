// The pages in a real headless Chromium, driven by playwright-core (which uses the
// system's Chromium and downloads nothing). Started by ../browser.rs, which runs the
// system and passes its address in the environment.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { chromium } from "playwright-core";

const BASE = process.env.LOANFLOW_URL;
const TOKEN = process.env.LOANFLOW_MANAGER_TOKEN;
const WAITING = process.env.LOANFLOW_WAITING_REFERENCE;
const WITHDRAWABLE = process.env.LOANFLOW_WITHDRAWABLE_REFERENCE;
const FAILED = process.env.LOANFLOW_FAILED_REFERENCE;
const OPERATOR = process.env.LOANFLOW_OPERATOR_TOKEN;
const SHOTS = process.env.LOANFLOW_SCREENSHOTS;
assert.ok(BASE && TOKEN && WAITING && WITHDRAWABLE && FAILED && OPERATOR && SHOTS, "run through crates/loanflow/tests/browser.rs");
mkdirSync(SHOTS, { recursive: true });

let browser;
before(async () => {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
});
after(async () => { await browser?.close(); });

async function fillApplication(page, overrides = {}) {
  const values = {
    "Full name": "Ada Lovelace",
    "Email": "ada@example.com",
    "National ID": "SBX720A1",
    "Annual income (USD)": "85000.00",
    "Monthly debt payments (USD)": "1200.00",
    "Loan amount (USD)": "25000.00",
    "Term (months)": "36",
    ...overrides,
  };
  // getByLabel finds each input through its <label>: it fails if a label is not tied.
  for (const [label, value] of Object.entries(values)) {
    await page.getByLabel(label, { exact: true }).fill(value);
  }
  await page.getByLabel("Date of birth", { exact: true }).fill(overrides["Date of birth"] ?? "1990-04-01");
  await page.getByLabel("Employment", { exact: true }).selectOption("employed");
  await page.getByLabel("Purpose", { exact: true }).selectOption("home_improvement");
}

test("apply through the form, then watch the status page reach approved without reloading", async () => {
  const page = await browser.newPage({ viewport: { width: 1100, height: 1400 } });
  await page.goto(BASE + "/");
  await fillApplication(page);
  await page.screenshot({ path: `${SHOTS}/form.png`, fullPage: true });
  await page.getByRole("button", { name: "Submit application" }).click();

  await page.waitForURL(/\/loans\/LN-[0-9A-Z]{24}\?submitted=1$/);
  const reference = (await page.locator("#reference").textContent()).trim();
  assert.match(reference, /^LN-[0-9A-Z]{24}$/);
  assert.ok(await page.getByRole("button", { name: "Copy reference" }).isVisible(), "copy button shown");

  let reloads = 0;
  page.on("load", () => { reloads += 1; });
  await page.locator('#status-badge[data-status="approved"]').waitFor({ timeout: 30000 });
  assert.equal(reloads, 0, "the page updated itself, without a reload");
  assert.equal((await page.locator("#offer-payment").textContent()).trim(), "USD 806.56");
  assert.equal((await page.locator("#offer-rate").textContent()).trim(), "9.99%");
  assert.equal(await page.locator("ol.timeline li.approved").count(), 5, "four levels and the booking");
  await page.screenshot({ path: `${SHOTS}/status.png`, fullPage: true });

  // The track box on the home page finds it again.
  await page.goto(BASE + "/");
  await page.getByLabel("Reference number").fill(reference.toLowerCase());
  await page.getByRole("button", { name: "Track" }).click();
  await page.waitForURL(BASE + "/loans/" + reference);
  await page.close();
});

/// What a field says under it: its one message, what describes it, whether its hint shows.
async function fieldState(page, label, id) {
  const input = page.getByLabel(label, { exact: true });
  const described = (await input.getAttribute("aria-describedby")) ?? "";
  const error = (await page.locator(`#${id}-error`).textContent()).trim();
  const hint = page.locator(`#${id}-hint`);
  const hintShown = (await hint.count()) > 0 && (await hint.isVisible());
  return { error, described, hintShown, invalid: await input.getAttribute("aria-invalid") };
}

test("each kind of mistake gets its own message, once, tied to its field", async () => {
  const page = await browser.newPage();
  await page.goto(BASE + "/");
  // Caught in the browser: a malformed email, a missing name, a term out of range, an
  // income with letters.
  await fillApplication(page, { "Email": "ada", "Full name": "", "Term (months)": "400", "Annual income (USD)": "85k" });
  await page.getByRole("button", { name: "Submit application" }).click();
  assert.equal(new URL(page.url()).pathname, "/", "nothing was sent");
  const browserSide = {
    "applicant-email": ["Email", "Enter an email address such as name@example.com: this one is not complete."],
    "applicant-full_name": ["Full name", "Enter your full name, as on your identity document."],
    "term_months": ["Term (months)", "Enter a whole number of months from 6 to 360."],
    "applicant-annual_income": ["Annual income (USD)", "Enter the income in digits, optionally with a point and two decimals, such as 85000 or 85000.00."],
  };
  for (const [id, [label, wording]] of Object.entries(browserSide)) {
    const state = await fieldState(page, label, id);
    assert.equal(state.error, wording, label);
    assert.equal(state.described, `${id}-error`, `${label} is described by its message alone`);
    assert.equal(state.hintShown, false, `${label}'s hint gives way to the message`);
    assert.equal(state.invalid, "true", label);
  }
  // A field that is fine keeps its hint and no message.
  const fine = await fieldState(page, "National ID", "applicant-national_id");
  assert.deepEqual(fine, { error: "", described: "applicant-national_id-hint applicant-national_id-error", hintShown: true, invalid: "false" });

  // Caught by the server: an amount below the minimum and a birth date in the future.
  await fillApplication(page, { "Loan amount (USD)": "400", "Date of birth": "2999-01-01" });
  await page.getByRole("button", { name: "Submit application" }).click();
  await page.locator("#amount-error").filter({ hasText: "500" }).waitFor();
  const amount = await fieldState(page, "Loan amount (USD)", "amount");
  assert.equal(amount.error, "The loan amount must be from 500.00 to 1000000.00.");
  assert.equal(amount.described, "amount-error");
  assert.equal(amount.hintShown, false, "the limits are not printed a second time");
  const birth = await fieldState(page, "Date of birth", "applicant-date_of_birth");
  assert.equal(birth.error, "Your date of birth must be in the past.");
  assert.equal(birth.hintShown, false);
  assert.equal(await page.getByLabel("Loan amount (USD)", { exact: true }).inputValue(), "400", "kept what was typed");
  assert.equal(await page.getByLabel("Full name", { exact: true }).inputValue(), "Ada Lovelace");
  assert.match(await page.locator("#form-errors").textContent(), /2 highlighted/);
  // Every message on the page appears once.
  const messages = await page.locator("span.error").allTextContents();
  const shown = messages.map((m) => m.trim()).filter(Boolean);
  assert.equal(new Set(shown).size, shown.length, `no message twice: ${shown}`);
  await page.screenshot({ path: `${SHOTS}/form-errors.png`, fullPage: true });
  await page.close();
});

test("an approver signs in, approves a large application, and its status shows who", async () => {
  const page = await browser.newPage({ viewport: { width: 1100, height: 1400 } });
  await page.goto(BASE + "/approvals");
  await page.getByLabel("Approver token").fill("not-the-token");
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("alert").filter({ hasText: "not valid" }).waitFor();
  assert.equal(await page.locator("#approver-name").count(), 0, "a wrong token is refused");

  await page.getByLabel("Approver token").fill(TOKEN);
  await page.getByRole("button", { name: "Sign in" }).click();
  assert.equal((await page.locator("#approver-name").textContent()).trim(), "grace");
  const card = page.locator(`article[data-reference="${WAITING}"]`);
  await card.waitFor();
  assert.match(await card.textContent(), /60000\.00/);
  assert.match(await card.textContent(), /Credit score\s*760/);
  assert.match(await card.textContent(), /Not claimed/);
  await card.getByRole("button", { name: "Claim" }).click();
  await page.locator(`article[data-reference="${WAITING}"]`).filter({ hasText: "Claimed by you" }).waitFor();
  await page.screenshot({ path: `${SHOTS}/inbox.png`, fullPage: true });

  await card.getByLabel(/Reason/).fill("Collateral verified");
  await card.getByRole("button", { name: "Approve" }).click();
  await page.getByRole("status").filter({ hasText: "was recorded" }).waitFor();

  await page.goto(`${BASE}/loans/${WAITING}`);
  await page.locator('#status-badge[data-status="approved"]').waitFor({ timeout: 30000 });
  assert.match(await page.locator('li[data-level="manager"]').textContent(), /approver:grace/);
  await page.close();
});

test("an applicant withdraws from the status page after a confirmation step", async () => {
  const page = await browser.newPage({ viewport: { width: 1100, height: 1200 } });
  await page.goto(`${BASE}/loans/${WITHDRAWABLE}`);
  await page.getByRole("link", { name: "Withdraw this application" }).click();
  await page.getByRole("heading", { name: /Withdraw application/ }).waitFor();
  assert.equal(await page.locator('#status-badge').count(), 0, "the confirmation step withdraws nothing yet");
  await page.getByLabel(/Why are you withdrawing/).fill("Found a better rate");
  await page.getByRole("button", { name: "Yes, withdraw it" }).click();
  await page.locator('#status-badge[data-status="withdrawn"]').waitFor({ timeout: 30000 });
  const entry = page.locator('li[data-level="applicant"][data-outcome="withdrawn"]');
  assert.match(await entry.textContent(), /Found a better rate/);
  assert.equal(await page.getByRole("link", { name: "Withdraw this application" }).count(), 0, "final: no button");
  await page.close();
});

test("an operator sees the figures and replays a dead letter from the operations page", async () => {
  const page = await browser.newPage({ viewport: { width: 1100, height: 1600 } });
  await page.goto(BASE + "/ops");
  await page.getByLabel("Operator token").fill(TOKEN);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("alert").filter({ hasText: "not valid" }).waitFor();
  assert.equal(await page.locator("#operator-name").count(), 0, "an approver's token opens no operations page");

  await page.getByLabel("Operator token").fill(OPERATOR);
  await page.getByRole("button", { name: "Sign in" }).click();
  assert.equal((await page.locator("#operator-name").textContent()).trim(), "operator");
  assert.match(await page.locator('#statuses tr[data-status="failed"]').textContent(), /failed\s*1/);
  const kyc = page.locator('#queues tr[data-queue="loanflow.step.kyc"]');
  assert.match(await kyc.textContent(), /loanflow\.step\.kyc\s*\d+\s*[1-9]/, "kyc has a consumer");
  assert.equal(await page.locator("svg.chart").count(), 2, "throughput and latency charts");
  const letter = page.locator(`#dead-letters tr[data-reference="${FAILED}"]`);
  assert.match(await letter.textContent(), /gave up after 2 attempts/);
  await page.screenshot({ path: `${SHOTS}/ops.png`, fullPage: true });
  await letter.getByRole("button", { name: "Replay" }).click();
  await page.getByRole("status").filter({ hasText: "Replayed 1 dead letter" }).waitFor();

  await page.goto(`${BASE}/loans/${FAILED}`);
  await page.locator('#status-badge[data-status="approved"]').waitFor({ timeout: 30000 });
  await page.close();
});

test("a decision form without the session's CSRF token is refused", async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(BASE + "/approvals");
  await page.getByLabel("Approver token").fill(TOKEN);
  await page.getByRole("button", { name: "Sign in" }).click();
  const response = await page.request.post(`${BASE}/approvals/${WAITING}/decision`, {
    form: { decision: "reject", reason: "forged", csrf: "guess" },
  });
  assert.equal(response.status(), 403);
  await context.close();
});

test("pages fit a phone's width and keyboard focus is visible", async () => {
  const page = await browser.newPage({ viewport: { width: 360, height: 740 } });
  await page.goto(BASE + "/");
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `no horizontal scrolling (overflow ${overflow}px)`);
  await page.keyboard.press("Tab"); // the skip link
  await page.keyboard.press("Tab");
  const outline = await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
  assert.notEqual(outline, "none", "the focused element shows an outline");
  await page.screenshot({ path: `${SHOTS}/phone.png`, fullPage: true });
  await page.close();
});

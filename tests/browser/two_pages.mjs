// Real-browser driver for tests/test_browser.py.
//
// Why a long-lived process with a line protocol: the pytest side must kill and
// restart the Jupyter server *between* browser steps, at a moment the browser
// decides (right after page B has seen page A's edit). So the driver reads one
// JSON command per line on stdin and answers one JSON event per line on stdout:
//
//   start  (automatic)     -> {"event":"edited", ...}   pages A and B open, text typed in A seen in B
//   {"cmd":"close_pages"}  -> {"event":"closed"}        A and B closed (server is dead by now)
//   {"cmd":"stale","name":"A"} -> {"event":"stale", text, buttons, roomSockets}  A's session dialog
//   {"cmd":"type","name":n,"text":t} -> {"event":"typed", code, dismissed}  t typed in page n (offline too)
//   {"cmd":"reopen"}       -> {"event":"reopened", ...} fresh page C on the restarted server
//   {"cmd":"save","text":t}  -> {"event":"saved", saving, dialogs, dirty}  t typed in C, then Ctrl+S
//   {"cmd":"expect_text","name":n,"text":t} -> {"event":"text_seen", code, dialogs}  page n shows t
//   {"cmd":"screenshot","tag":t} -> {"event":"screenshot"}  PNGs of open pages
//   {"cmd":"quit"}         -> {"event":"bye"}
//   any failure            -> {"event":"error","message":...} plus screenshots, exit code 1
//
// Configuration comes as one JSON object in argv[2]:
//   {baseUrl, token, notebook, marker, screenshotDir, timeoutMs, chromium}
import { chromium } from 'playwright-core';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';

const cfg = JSON.parse(process.argv[2] ?? '{}');
const timeout = cfg.timeoutMs ?? 30000;
const CODE_EDITOR = '.jp-Notebook .jp-CodeCell .cm-content';

const t0 = Date.now();
function emit(event, extra = {}) {
  process.stdout.write(JSON.stringify({ event, ms: Date.now() - t0, ...extra }) + '\n');
}
function log(msg) {
  process.stderr.write(`[driver +${Date.now() - t0}ms] ${msg}\n`);
}

// stdin commands, consumed one at a time.
const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function nextCommand() {
  const { value, done } = await lines.next();
  if (done) throw new Error('stdin closed before the next command');
  return JSON.parse(value);
}

const pages = new Map(); // name -> page, for screenshots on failure
const roomSockets = new Map(); // page name -> document-room websockets it opened

async function screenshotAll(tag) {
  if (!cfg.screenshotDir) return;
  fs.mkdirSync(cfg.screenshotDir, { recursive: true });
  for (const [name, page] of pages) {
    if (page.isClosed()) continue;
    const file = path.join(cfg.screenshotDir, `${tag}-page-${name}.png`);
    try {
      await page.screenshot({ path: file, timeout: 5000 });
      log(`screenshot ${file}`);
    } catch (err) {
      log(`screenshot of ${name} failed: ${err.message}`);
    }
  }
}

// Open the notebook in its own JupyterLab workspace (so the pages do not share
// layout state), answer the kernel dialog with "No Kernel" (the test runs no
// code), and wait until the code cell's CodeMirror editor shows content.
async function openNotebook(browser, name) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  pages.set(name, page);
  page.setDefaultTimeout(timeout);
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') log(`${name} console.${m.type()}: ${m.text().slice(0, 300)}`);
  });
  page.on('pageerror', (err) => log(`${name} pageerror: ${err.message}`));
  page.on('websocket', (ws) => {
    if (!ws.url().includes('/api/collaboration/')) return;
    if (!ws.url().includes('globalAwareness')) roomSockets.set(name, (roomSockets.get(name) ?? 0) + 1);
    log(`${name} ws open ${ws.url().replace(/token=[^&]*/, 'token=…')}`);
    ws.on('close', () => log(`${name} ws closed ${ws.url().split('?')[0]}`));
  });
  const url = `${cfg.baseUrl}/lab/workspaces/e2e-${name}/tree/${encodeURI(cfg.notebook)}?reset&token=${cfg.token}`;
  await page.goto(url, { waitUntil: 'domcontentloaded' });
  const editor = page.locator(CODE_EDITOR).first();
  await editor.waitFor({ state: 'visible' });
  await dismissKernelDialog(page, name);
  return page;
}

async function dismissKernelDialog(page, name) {
  const button = page.locator('.jp-Dialog button', { hasText: 'No Kernel' });
  try {
    await button.first().waitFor({ state: 'visible', timeout: 15000 });
  } catch {
    log(`${name}: no kernel dialog appeared`);
    return;
  }
  const dialog = await page.locator('.jp-Dialog', { has: page.locator('button', { hasText: 'No Kernel' }) })
    .first().elementHandle();
  await button.first().click();
  await page.waitForFunction((el) => !el.isConnected, dialog);
}

// A page that outlived a server restart holds a session id the new server does not
// know: the front end must offer a reload (the server closed the room with a
// reloadable reason) instead of merging its stale history. Other dialogs that the
// outage itself raises ("Server Connection Error") are dismissed on the way.
async function staleDialog(page, name) {
  const deadline = Date.now() + timeout;
  const dismissed = [];
  for (;;) {
    const dialog = page.locator('.jp-Dialog').first();
    const left = deadline - Date.now();
    try {
      if (left <= 0) throw new Error('deadline');
      await dialog.waitFor({ state: 'visible', timeout: left });
    } catch {
      throw new Error(`page ${name} showed no dialog offering a reload within ${timeout} ms ` +
        `(dismissed on the way: ${JSON.stringify(dismissed)}); it opened ${roomSockets.get(name) ?? 0} room sockets`);
    }
    const handle = await dialog.elementHandle();
    const text = await dialog.innerText();
    const buttons = await dialog.locator('button').allInnerTexts();
    if (buttons.some((b) => /reload/i.test(b))) {
      return { text, buttons, dismissed, roomSockets: roomSockets.get(name) ?? 0, code: await editorTexts(page) };
    }
    dismissed.push(text.split('\n')[0]);
    await page.keyboard.press('Escape');
    await page.waitForFunction((el) => !el.isConnected, handle);
  }
}

// Close whatever dialogs the page shows (e.g. "Server Connection Error" while the server is
// down), so that typing reaches the editor; returns their first lines.
async function dismissDialogs(page) {
  const dismissed = [];
  for (let i = 0; i < 5; i++) {
    const dialog = page.locator('.jp-Dialog').first();
    if (!(await dialog.isVisible())) break;
    const handle = await dialog.elementHandle();
    dismissed.push((await dialog.innerText()).split('\n')[0]);
    await page.keyboard.press('Escape');
    await page.waitForFunction((el) => !el.isConnected, handle);
  }
  return dismissed;
}

async function typeInto(page, name, text) {
  const dismissed = await dismissDialogs(page);
  const full = `  ${text}`;
  let typed = 0;
  for (let attempt = 0; attempt < 4 && typed < full.length; attempt++) {
    await page.locator(CODE_EDITOR).first().click();
    await page.keyboard.press('Control+End');
    await page.keyboard.type(full.slice(typed), { delay: 20 });
    // A dialog that opened while typing (the server went away) took the keys that came
    // after it: close it and type what the editor did not get.
    const more = await dismissDialogs(page);
    if (!more.length) break;
    dismissed.push(...more);
    const current = (await editorTexts(page))[0] || '';
    typed = 0;
    for (let k = full.length; k > 0; k--) {
      if (current.endsWith(full.slice(0, k))) {
        typed = k;
        break;
      }
    }
  }
  await waitForText(page, name, text);
  return { code: await editorTexts(page), dismissed };
}

async function editorTexts(page) {
  return page.locator(CODE_EDITOR).allInnerTexts();
}

async function waitForText(page, name, text) {
  const editors = page.locator(CODE_EDITOR, { hasText: text });
  try {
    await editors.first().waitFor({ state: 'visible' });
  } catch (err) {
    throw new Error(`page ${name} never showed ${JSON.stringify(text)} within ${timeout} ms; ` +
      `its code cells show ${JSON.stringify(await editorTexts(page))}`);
  }
}

const waitForMarker = (page, name) => waitForText(page, name, cfg.marker);

// Type into the first code cell, then Ctrl+S: the front end sends the save
// request over the room's websocket and shows "Saving completed" only when the
// server answers "success"; a stale hash would raise the "File Changed" dialog.
async function typeAndSave(page, text) {
  await page.locator(CODE_EDITOR).first().click();
  await page.keyboard.press('Control+End');
  await page.keyboard.type(`  ${text}`, { delay: 20 });
  await page.locator(CODE_EDITOR, { hasText: text }).first().waitFor({ state: 'visible' });
  await page.keyboard.press('Control+s');
  const status = page.locator('.jp-StatusBar-Widget', { hasText: /Saving (completed|failed)/ });
  const dialog = page.locator('.jp-Dialog');
  await status.or(dialog).first().waitFor({ state: 'visible' });
  const dialogs = await dialog.allInnerTexts();
  const saving = (await status.allInnerTexts()).join(' ').match(/Saving (completed|failed)/)?.[0] ?? null;
  // The tab loses its dirty mark once the server sets state.dirty = false.
  let dirty = await page.locator('.lm-TabBar-tab.jp-mod-dirty').count();
  if (dirty && !dialogs.length) {
    try {
      await page.locator('.lm-TabBar-tab.jp-mod-dirty').first().waitFor({ state: 'detached', timeout: 10000 });
      dirty = 0;
    } catch { /* reported below */ }
  }
  return { saving, dialogs, dirty };
}

async function main() {
  const browser = await chromium.launch({
    executablePath: cfg.chromium ?? '/usr/bin/chromium',
    headless: true,
    // Playwright gives every launch a new empty --user-data-dir of its own.
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  try {
    // Both at once: two clients join the room while it is still loading.
    const [a, b] = await Promise.all([openNotebook(browser, 'A'), openNotebook(browser, 'B')]);
    const before = await editorTexts(b);
    log(`A and B open; code cells ${JSON.stringify(before)}`);

    // Type at the end of the first code cell in A.
    const editorA = a.locator(CODE_EDITOR).first();
    await editorA.click();
    await a.keyboard.press('Control+End');
    await a.keyboard.type(`  ${cfg.marker}`, { delay: 20 });
    await waitForMarker(a, 'A');
    await waitForMarker(b, 'B');
    emit('edited', { cellsA: await a.locator('.jp-Cell').count(), cellsB: await b.locator('.jp-Cell').count(),
      codeB: await editorTexts(b) });

    for (;;) {
      const cmd = await nextCommand();
      if (cmd.cmd === 'quit') break;
      if (cmd.cmd === 'close_pages') {
        for (const name of cmd.names ?? ['A', 'B']) {
          await pages.get(name)?.context().close();
          pages.delete(name);
        }
        emit('closed');
      } else if (cmd.cmd === 'stale') {
        emit('stale', await staleDialog(pages.get(cmd.name ?? 'A'), cmd.name ?? 'A'));
      } else if (cmd.cmd === 'type') {
        emit('typed', await typeInto(pages.get(cmd.name), cmd.name, cmd.text));
      } else if (cmd.cmd === 'reopen') {
        const c = await openNotebook(browser, 'C');
        await waitForMarker(c, 'C');
        emit('reopened', { cells: await c.locator('.jp-Cell').count(), code: await editorTexts(c) });
      } else if (cmd.cmd === 'save') {
        emit('saved', await typeAndSave(pages.get('C'), cmd.text));
      } else if (cmd.cmd === 'expect_text') {
        const page = pages.get(cmd.name);
        await waitForText(page, cmd.name, cmd.text);
        emit('text_seen', { code: await editorTexts(page), dialogs: await page.locator('.jp-Dialog').allInnerTexts() });
      } else if (cmd.cmd === 'screenshot') {
        await screenshotAll(cmd.tag ?? 'requested');
        emit('screenshot');
      } else {
        throw new Error(`unknown command ${JSON.stringify(cmd)}`);
      }
    }
    emit('bye');
  } catch (err) {
    await screenshotAll('failure');
    throw err;
  } finally {
    await browser.close();
  }
}

main().then(
  () => process.exit(0),
  (err) => {
    emit('error', { message: String(err?.message ?? err) });
    process.exit(1);
  },
);

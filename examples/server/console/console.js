// DreamNet operator console. Plain browser JavaScript, no build step, no dependencies.
//
// Every value from the API is put in the page with textContent, never parsed as HTML, so a
// reason or an account id cannot inject markup. The admin token lives in sessionStorage
// only and is sent as `Authorization: Bearer`, never in a URL.
'use strict';

(() => {
  const POLL_MS = 1500;
  const STALE_MS = 5000;
  const AUDIT_LIMIT = 50;
  const TOKEN_KEY = 'dreamnet.console.token';
  const ACTOR_KEY = 'dreamnet.console.actor';
  const ACCOUNT_RE = /^[A-Za-z0-9._@:-]{1,128}$/;
  const MAX_TTL_SECONDS = 366 * 86400;

  const $ = (id) => document.getElementById(id);

  // ---- small DOM helpers -------------------------------------------------------------

  /** An element with attributes / properties and children (strings become text nodes). */
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === 'class') node.className = value;
      else if (key === 'text') node.textContent = value;
      else if (key in node && typeof value !== 'string') node[key] = value;
      else node.setAttribute(key, value === true ? '' : String(value));
    }
    append(node, children);
    return node;
  }

  function append(node, children) {
    for (const child of children.flat(Infinity)) {
      if (child === undefined || child === null || child === false) continue;
      node.append(typeof child === 'string' || typeof child === 'number' ? String(child) : child);
    }
  }

  function replace(node, ...children) {
    node.replaceChildren();
    append(node, children);
  }

  function setText(node, text) {
    if (node.textContent !== text) node.textContent = text;
  }

  function plural(n, one, many) {
    return `${n} ${n === 1 ? one : many}`;
  }

  function duration(totalSeconds) {
    let s = Math.max(0, Math.round(totalSeconds));
    if (s < 60) return `${s} s`;
    const parts = [];
    for (const [unit, size] of [['d', 86400], ['h', 3600], ['min', 60]]) {
      if (s >= size) {
        parts.push(`${Math.floor(s / size)} ${unit}`);
        s %= size;
      }
      if (parts.length === 2) break;
    }
    if (parts.length < 2 && s > 0) parts.push(`${s} s`);
    return parts.join(' ');
  }

  function when(rfc3339) {
    return rfc3339 ? rfc3339.replace('T', ' ').replace(/\.\d+/, '').replace(/Z$/, ' UTC') : '—';
  }

  function money(minor, currency) {
    let digits = 2;
    try {
      digits = new Intl.NumberFormat('en', { style: 'currency', currency }).resolvedOptions()
        .maximumFractionDigits;
    } catch (_) {
      // Not an ISO 4217 code: show minor units with two decimals.
    }
    const sign = minor < 0 ? '-' : '';
    const abs = Math.abs(minor);
    const major = digits === 0 ? String(abs) : (abs / 10 ** digits).toFixed(digits);
    return `${sign}${major} ${currency}`;
  }

  // ---- state ---------------------------------------------------------------------------

  let token = sessionStorage.getItem(TOKEN_KEY);
  let generation = 0; // bumps on connect / sign-out so an old poll loop stops
  let timer = null;
  let lastOk = 0;
  let serverOffsetMs = 0; // server clock minus ours, from the Date header
  let lastControl = null;
  let account = null; // the account id looked up, refreshed with every poll
  let alertKey = '';
  const cards = new Map();
  const auditSeen = new Map();

  function actor() {
    const name = (sessionStorage.getItem(ACTOR_KEY) || '').trim();
    return name || 'console';
  }

  // ---- API -----------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(problem) {
      super(problem.title || 'Error');
      this.problem = problem;
    }
  }

  function apiPath(path) {
    // Relative to /console, so the console also works behind a path prefix.
    return path.replace(/^\//, '');
  }

  async function api(method, path, body) {
    const headers = {
      Accept: 'application/json, application/problem+json',
      Authorization: `Bearer ${token}`,
    };
    const init = { method, headers, cache: 'no-store', credentials: 'omit', redirect: 'error' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(apiPath(path), init);
    } catch (err) {
      throw new ApiError({
        title: 'Server unreachable',
        detail: `${method} ${path} got no answer (${err.message}).`,
      });
    }
    const date = Date.parse(response.headers.get('date') || '');
    if (!Number.isNaN(date)) serverOffsetMs = date - Date.now();
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (_) {
      data = null;
    }
    if (!response.ok) {
      const problem = data && typeof data === 'object' ? data : {};
      throw new ApiError({
        type: typeof problem.type === 'string' ? problem.type : undefined,
        title: typeof problem.title === 'string' ? problem.title : response.statusText || 'Error',
        status: typeof problem.status === 'number' ? problem.status : response.status,
        detail: typeof problem.detail === 'string' ? problem.detail : text.slice(0, 300),
        traceId: typeof problem.traceId === 'string' ? problem.traceId
          : response.headers.get('x-trace-id') || undefined,
      });
    }
    return data;
  }

  /** A problem+json body as a block: status and title, detail, trace id. */
  function problemView(problem) {
    return el('div', { class: 'problem' },
      el('p', { class: 'problem-title' },
        el('strong', { text: [problem.status, problem.title].filter(Boolean).join(' ') })),
      problem.detail ? el('p', { class: 'problem-detail', text: problem.detail }) : null,
      problem.type && problem.type !== 'about:blank'
        ? el('p', { class: 'muted' }, 'Type: ', el('code', { text: problem.type })) : null,
      problem.traceId
        ? el('p', { class: 'muted' }, 'Trace id: ', el('code', { class: 'trace', text: problem.traceId }))
        : null);
  }

  function errorProblem(err) {
    return err instanceof ApiError ? err.problem : { title: 'Error', detail: String(err) };
  }

  // ---- connect / sign out --------------------------------------------------------------

  function showAlert(problem) {
    const key = problem ? JSON.stringify([problem.status, problem.title, problem.detail]) : '';
    if (key === alertKey) return; // re-announcing the same failure every poll helps no one
    alertKey = key;
    if (problem) replace($('alert'), problemView(problem));
    else replace($('alert'));
  }

  function announce(message) {
    setText($('status'), message);
  }

  function forget(problem) {
    generation += 1;
    clearTimeout(timer);
    token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    lastControl = null;
    account = null;
    lastOk = 0;
    cards.clear();
    auditSeen.clear();
    // Without the token the page keeps nothing it was shown.
    replace($('cluster-list'));
    replace($('audit-list'));
    replace($('stats-body'));
    replace($('ks-facts'));
    replace($('account-view'));
    setText($('ks-state'), '');
    $('dashboard').hidden = true;
    $('login').hidden = false;
    $('sign-out').hidden = true;
    $('who').hidden = true;
    document.body.classList.remove('engaged');
    showAlert(null);
    setText($('freshness'), 'Not connected');
    if (problem) replace($('login-error'), problemView(problem));
    else replace($('login-error'));
    $('token').value = '';
    $('token').focus();
  }

  // One refresh on behalf of connection `mine`: false when that connection is gone (a newer
  // one started, or a 401 signed it out); any other failure (server down, 5xx) is shown and
  // the console stays connected and keeps polling.
  async function refreshFor(mine) {
    try {
      await refresh();
    } catch (err) {
      if (mine !== generation) return false;
      if (err instanceof ApiError && err.problem.status === 401) {
        forget(err.problem);
        return false;
      }
      showAlert(errorProblem(err));
    }
    return mine === generation;
  }

  async function connect() {
    generation += 1;
    const mine = generation;
    clearTimeout(timer);
    if (!(await refreshFor(mine))) return;
    replace($('login-error'));
    $('login').hidden = true;
    $('dashboard').hidden = false;
    $('sign-out').hidden = false;
    $('who').hidden = false;
    setText($('who'), `Signed in as ${actor()}`);
    schedule(mine);
  }

  function schedule(mine) {
    timer = setTimeout(async () => {
      if (mine !== generation) return;
      if (!document.hidden && !(await refreshFor(mine))) return;
      if (mine === generation) schedule(mine);
    }, POLL_MS);
  }

  async function refresh() {
    const [control, audit, stats] = await Promise.all([
      api('GET', '/api/control'),
      api('GET', `/api/control/audit?limit=${AUDIT_LIMIT}`),
      api('GET', '/api/billable/stats'),
      account ? refreshAccount() : null,
    ]);
    if (!token) return;
    lastOk = Date.now();
    showAlert(null);
    lastControl = control;
    renderKillSwitch(control.killSwitch);
    renderClusters(control.clusters);
    renderStats(stats);
    renderAudit(audit);
    tick();
  }

  // ---- kill switch ---------------------------------------------------------------------

  function countdownTo(rfc3339) {
    const ms = Date.parse(rfc3339) - (Date.now() + serverOffsetMs);
    return Number.isNaN(ms) ? '' : `in ${duration(ms / 1000)}`;
  }

  function renderKillSwitch(ks) {
    document.body.classList.toggle('engaged', ks.enabled);
    $('kill-switch').classList.toggle('on', ks.enabled);
    setText($('ks-state'), ks.enabled
      ? 'ENGAGED: every guarded route answers 503'
      : 'Released: traffic flows');
    const facts = [
      ['Reason', ks.reason || '—'],
      ['By', ks.disabledBy || '—'],
      ['Changed', when(ks.changedAt)],
    ];
    if (ks.enabled) {
      facts.push(['Ends', ks.expiresAt ? `${when(ks.expiresAt)} (${countdownTo(ks.expiresAt)})`
        : 'only when released']);
    }
    replace($('ks-facts'), facts.map(([k, v]) => [el('dt', { text: k }), el('dd', { text: v })]));
    $('ks-engage').hidden = ks.enabled;
    $('ks-release').hidden = !ks.enabled;
  }

  function tick() {
    const age = lastOk ? Date.now() - lastOk : Infinity;
    const f = $('freshness');
    if (!token || !lastOk) return;
    const stale = age > STALE_MS;
    f.classList.toggle('stale', stale);
    setText(f, stale ? `Stale: last update ${duration(age / 1000)} ago`
      : `Live: updated ${duration(age / 1000)} ago`);
    const ks = lastControl && lastControl.killSwitch;
    if (ks && ks.enabled && ks.expiresAt) renderKillSwitch(ks);
  }

  // ---- clusters ------------------------------------------------------------------------

  function card(id) {
    let c = cards.get(id);
    if (c) return c;
    const titleId = `cluster-${id}-title`;
    c = {
      title: el('h3', { id: titleId, text: id }),
      badge: el('span', { class: 'badge' }),
      note: el('p', { class: 'note' }),
      windows: el('div', { class: 'windows' }),
      breaker: el('p', { class: 'breaker' }),
      toggle: el('button', { type: 'button' }),
      limits: el('button', { type: 'button', text: 'Edit limits…', 'aria-label': `Edit limits of ${id}` }),
      trip: el('button', {
        type: 'button', class: 'danger-outline', text: 'Trip breaker…', 'aria-label': `Trip breaker of ${id}`,
      }),
      reset: el('button', { type: 'button', text: 'Reset breaker…', 'aria-label': `Reset breaker of ${id}` }),
    };
    c.root = el('article', { class: 'card', 'aria-labelledby': titleId, 'data-cluster': id },
      el('div', { class: 'card-head' }, c.title, c.badge),
      c.note, c.windows, c.breaker,
      el('div', { class: 'actions' }, c.toggle, c.limits, c.trip, c.reset));
    c.toggle.addEventListener('click', () => toggleCluster(id));
    c.limits.addEventListener('click', () => editLimits(id));
    c.trip.addEventListener('click', () => breakerAction(id, 'trip'));
    c.reset.addEventListener('click', () => breakerAction(id, 'reset'));
    cards.set(id, c);
    return c;
  }

  function windowView(w, enforced) {
    const fraction = w.limit > 0 ? Math.min(1, w.used / w.limit) : 1;
    const level = fraction >= 1 ? 'full' : fraction >= 0.8 ? 'high' : 'ok';
    const reset = `resets in ${duration(w.resetSeconds)}`;
    const label = `${w.name} (${duration(w.seconds)})`;
    const value = `${w.used} / ${w.limit}`;
    const fill = el('span', { class: 'fill' });
    fill.style.width = `${(fraction * 100).toFixed(1)}%`; // CSSOM, allowed by the CSP
    const bar = el('div', {
      class: `bar ${enforced ? level : 'off'}`,
      role: 'meter',
      'aria-label': `${w.name} window`,
      'aria-valuemin': 0,
      'aria-valuemax': w.limit,
      'aria-valuenow': Math.min(w.used, w.limit),
      'aria-valuetext': `${w.used} of ${w.limit} used, ${reset}`,
    }, fill);
    return el('div', { class: 'window', 'data-window': w.name },
      el('div', { class: 'window-label' },
        el('span', { text: label }),
        el('span', { class: 'window-value', text: `${value} · ${reset}` })),
      bar);
  }

  function renderClusters(clusters) {
    const list = $('cluster-list');
    const ids = Object.keys(clusters).sort();
    for (const [id, c] of cards) {
      if (!(id in clusters)) {
        c.root.remove();
        cards.delete(id);
      }
    }
    ids.forEach((id, index) => {
      const view = clusters[id];
      const c = card(id);
      if (list.children[index] !== c.root) list.insertBefore(c.root, list.children[index] || null);
      c.root.classList.toggle('disabled', !view.enabled);
      setText(c.badge, view.enabled ? 'enabled' : 'DISABLED');
      c.badge.className = `badge ${view.enabled ? 'good' : 'bad'}`;
      const note = [];
      if (!view.enabled) {
        note.push(`Disabled: ${view.reason || 'no reason given'}`);
        if (view.disabledBy) note.push(`by ${view.disabledBy}`);
        if (view.expiresAt) note.push(`until ${when(view.expiresAt)}`);
      } else if (view.changedAt) {
        note.push(`Last change ${when(view.changedAt)}${view.disabledBy ? ` by ${view.disabledBy}` : ''}`);
      }
      setText(c.note, note.join(' · '));
      c.note.hidden = note.length === 0;

      const rl = view.rateLimit;
      const windows = (view.usage && view.usage.windows && view.usage.windows.length)
        ? view.usage.windows
        : rl.windows.map((w) => ({ ...w, used: 0, remaining: w.limit, resetSeconds: w.seconds }));
      // Per-client quotas ({requestsPerMinute: 5, ...}): each client's own windows.
      const perClient = Object.entries(rl.perClient || {})
        .map(([field, limit]) => `${limit}/${field.replace('requestsPer', '').toLowerCase()}`);
      replace(c.windows,
        rl.enabled ? null : el('p', { class: 'muted', text: 'Rate limit not enforced' }),
        windows.length ? windows.map((w) => windowView(w, rl.enabled))
          : el('p', { class: 'muted', text: 'No rate-limit windows' }),
        perClient.length
          ? el('p', { class: 'muted', text: `Per client: ${perClient.join(', ')}` })
          : null);

      const b = view.circuitBreaker;
      replace(c.breaker,
        'Breaker: ',
        el('span', { class: `badge breaker-${b.state}`, text: b.state.replace('_', ' ') }),
        ` ${plural(b.failures, 'failure', 'failures')} in ${plural(b.calls, 'call', 'calls')}`,
        b.slowCalls ? `, ${b.slowCalls} slow` : '',
        ` (${b.window} window of ${b.windowSize}${b.window === 'time' ? ' s' : ''})`);

      setText(c.toggle, view.enabled ? 'Disable…' : 'Enable…');
      c.toggle.setAttribute('aria-label', `${view.enabled ? 'Disable' : 'Enable'} ${id}`);
      c.toggle.className = view.enabled ? 'danger-outline' : 'primary';
      c.trip.hidden = b.state === 'forced_open';
      c.reset.hidden = b.state === 'closed';
    });
  }

  // ---- billing -------------------------------------------------------------------------

  function renderStats(stats) {
    const rows = ['pending', 'confirmed', 'charged', 'failed'].map((state) =>
      el('tr', { 'data-state': state },
        el('th', { scope: 'row', text: state }),
        el('td', { class: 'num', text: String(stats[state]) }),
        el('td', { class: 'num', text: money((stats.amounts || {})[state] || 0, stats.currency) })));
    replace($('stats-body'), rows);
    setText($('stats-caption'), `Billable actions by state (amounts in ${stats.currency})`);
    const others = Object.entries(stats.amountsByCurrency || {})
      .filter(([currency]) => currency !== stats.currency)
      .map(([currency, a]) => `${currency}: charged ${money(a.charged || 0, currency)}, `
        + `pending ${money(a.pending || 0, currency)}`);
    setText($('stats-other'), others.length ? `Other currencies: ${others.join('; ')}` : '');
  }

  async function refreshAccount() {
    const id = account;
    try {
      const view = await api('GET', `/api/billable/accounts/${encodeURIComponent(id)}`);
      if (id === account) renderAccount(view);
    } catch (err) {
      if (err instanceof ApiError && err.problem.status === 401) throw err;
      if (id === account) renderAccountError(id, errorProblem(err));
    }
  }

  function renderAccount(view) {
    const c = view.currency;
    const unlimited = view.credit === null || view.credit === undefined;
    const facts = [
      ['Credit', unlimited ? 'unlimited (no credit line)' : money(view.credit, c)],
      ['Pending', money(view.pending, c)],
      ['Charged', money(view.charged, c)],
      ['Available', unlimited ? 'unlimited' : money(view.available, c)],
    ];
    const target = $('account-view');
    delete target.dataset.error;
    let holder = target.querySelector('.account');
    if (!holder || holder.dataset.account !== view.account) {
      const credit = el('button', { type: 'button', class: 'primary', text: 'Add credit…' });
      credit.addEventListener('click', () => addCredit(view.account));
      holder = el('div', { class: 'account', 'data-account': view.account },
        el('h4', { text: `Account ${view.account}` }),
        el('dl', { class: 'facts' }),
        el('div', { class: 'actions' }, credit));
      replace(target, holder);
    }
    replace(holder.querySelector('dl'),
      facts.map(([k, v]) => [el('dt', { text: k }), el('dd', { text: v })]));
  }

  function renderAccountError(id, problem) {
    const credit = el('button', { type: 'button', text: 'Add credit…' });
    credit.addEventListener('click', () => addCredit(id));
    const key = JSON.stringify([id, problem.status, problem.detail]);
    const target = $('account-view');
    if (target.dataset.error === key) return;
    target.dataset.error = key;
    replace(target,
      problemView(problem),
      problem.status === 404
        ? el('p', { class: 'muted', text: 'An account appears once it has been charged or credited.' })
        : null,
      problem.status === 404 ? el('div', { class: 'actions' }, credit) : null);
  }

  // ---- audit ---------------------------------------------------------------------------

  function renderAudit(entries) {
    const list = $('audit-list');
    const keep = new Set();
    let previous = null;
    for (const e of entries) {
      const key = `${e.version}|${e.action}|${e.at}`;
      keep.add(key);
      let item = auditSeen.get(key);
      if (!item) {
        item = el('li', { class: 'entry', 'data-action': e.action },
          el('p', { class: 'entry-head' },
            el('time', { datetime: e.at, text: when(e.at) }), ' ',
            el('strong', { text: e.action }), ' ',
            el('span', { class: 'badge', text: e.cluster || 'global' }),
            e.actor ? ` by ${e.actor}` : ''),
          e.reason ? el('p', { class: 'entry-reason', text: e.reason }) : null,
          el('details', {},
            el('summary', { text: 'Before and after' }),
            el('pre', { text: `before: ${JSON.stringify(e.before, null, 1)}\nafter:  ${JSON.stringify(e.after, null, 1)}` })));
        auditSeen.set(key, item);
      }
      // Newest first, as the API answers; keep opened <details> as they are.
      const want = previous ? previous.nextSibling : list.firstChild;
      if (want !== item) list.insertBefore(item, want);
      previous = item;
    }
    for (const [key, item] of auditSeen) {
      if (!keep.has(key)) {
        item.remove();
        auditSeen.delete(key);
      }
    }
    $('audit-empty').hidden = entries.length > 0;
  }

  // ---- the confirmation dialog ---------------------------------------------------------

  const dialog = $('confirm');
  let pending = null;

  /**
   * Asks for confirmation (and a few values) in a modal dialog, then runs the action.
   * The action's problem+json stays in the dialog; success closes it and refreshes.
   */
  function ask({ title, text, confirm, danger, fields = [], run, done }) {
    const opener = document.activeElement;
    setText($('confirm-title'), title);
    setText($('confirm-text'), text);
    replace($('confirm-error'));
    const ok = $('confirm-ok');
    setText(ok, confirm);
    ok.className = danger ? 'danger' : 'primary';
    const inputs = fields.map((f) => {
      const id = `field-${f.name}`;
      const error = el('p', { id: `${id}-error`, class: 'field-error' });
      const input = f.type === 'checkbox'
        ? el('input', { id, name: f.name, type: 'checkbox', checked: Boolean(f.value) })
        : el('input', {
          id, name: f.name, type: 'text', value: f.value === undefined ? '' : String(f.value),
          inputmode: f.numeric ? 'numeric' : undefined, autocomplete: 'off',
          required: f.required ? true : undefined, 'aria-describedby': `${id}-error`,
          placeholder: f.placeholder,
        });
      const label = el('label', { for: id, text: f.label });
      const wrap = f.type === 'checkbox'
        ? el('div', { class: 'field check' }, input, label, error)
        : el('div', { class: 'field' }, label, f.hint ? el('p', { class: 'hint', text: f.hint }) : null, input, error);
      return { f, input, error, wrap };
    });
    replace($('confirm-fields'), inputs.map((i) => i.wrap));
    pending = { inputs, run, done, opener };
    dialog.showModal();
    const first = inputs.find((i) => i.f.type !== 'checkbox');
    (first ? first.input : $('confirm-cancel')).focus();
  }

  function closeDialog() {
    if (!pending) return;
    const { opener } = pending;
    pending = null;
    if (dialog.open) dialog.close();
    if (opener && opener.isConnected && !opener.hidden) opener.focus();
    else $('main').focus();
  }

  async function submitDialog(event) {
    event.preventDefault();
    if (!pending) return;
    const { inputs, run, done } = pending;
    const values = {};
    let firstBad = null;
    for (const { f, input, error } of inputs) {
      const raw = f.type === 'checkbox' ? input.checked : input.value.trim();
      const problem = f.validate ? f.validate(raw) : null;
      setText(error, problem || '');
      if (problem) {
        input.setAttribute('aria-invalid', 'true');
        firstBad = firstBad || input;
      } else {
        input.removeAttribute('aria-invalid');
        values[f.name] = f.parse ? f.parse(raw) : raw;
      }
    }
    if (firstBad) {
      firstBad.focus();
      return;
    }
    const buttons = dialog.querySelectorAll('button');
    buttons.forEach((b) => { b.disabled = true; });
    replace($('confirm-error'));
    try {
      await run(values);
      closeDialog();
      if (done) announce(done);
      refresh().catch((err) => showAlert(errorProblem(err)));
    } catch (err) {
      if (err instanceof ApiError && err.problem.status === 401) {
        closeDialog();
        forget(err.problem);
        return;
      }
      replace($('confirm-error'), problemView(errorProblem(err)));
    } finally {
      buttons.forEach((b) => { b.disabled = false; });
    }
  }

  dialog.addEventListener('cancel', (event) => {
    event.preventDefault(); // Escape: close through our path so focus goes back
    closeDialog();
  });
  $('confirm-cancel').addEventListener('click', closeDialog);
  $('confirm-form').addEventListener('submit', submitDialog);

  // ---- field rules ---------------------------------------------------------------------

  const reasonField = (required) => ({
    name: 'reason',
    label: required ? 'Reason (required)' : 'Reason (optional)',
    required,
    validate: (v) => (required && !v ? 'Give a reason: it goes into the audit trail.' : null),
  });

  const ttlField = {
    name: 'ttlSeconds',
    label: 'Ends by itself after (seconds, optional)',
    numeric: true,
    placeholder: 'never',
    validate: (v) => {
      if (v === '') return null;
      if (!/^\d+$/.test(v) || Number(v) < 1 || Number(v) > MAX_TTL_SECONDS) {
        return `A whole number of seconds from 1 to ${MAX_TTL_SECONDS}, or empty.`;
      }
      return null;
    },
    parse: (v) => (v === '' ? undefined : Number(v)),
  };

  function limitField(name, label, value) {
    return {
      name,
      label,
      numeric: true,
      value: value === null || value === undefined ? '' : value,
      placeholder: 'unchanged',
      validate: (v) => {
        if (v === '') return null;
        if (!/^\d+$/.test(v) || !Number.isSafeInteger(Number(v))) {
          return 'A non-negative whole number (or empty to leave it unchanged).';
        }
        return null;
      },
      parse: (v) => (v === '' ? undefined : Number(v)),
    };
  }

  function note(values) {
    const body = { disabledBy: actor() };
    if (values.reason) body.reason = values.reason;
    if (values.ttlSeconds !== undefined) body.ttlSeconds = values.ttlSeconds;
    return body;
  }

  // ---- actions -------------------------------------------------------------------------

  $('ks-engage').addEventListener('click', () => ask({
    title: 'Engage the global kill switch?',
    text: 'Every guarded route of every cluster will answer 503 until it is released (or the time runs out). The console, health and admin API keep working.',
    confirm: 'Engage kill switch',
    danger: true,
    fields: [reasonField(true), ttlField],
    run: (v) => api('POST', '/api/control/kill-switch/enable', note(v)),
    done: 'Kill switch engaged',
  }));

  $('ks-release').addEventListener('click', () => ask({
    title: 'Release the global kill switch?',
    text: 'Guarded traffic flows again on every enabled cluster.',
    confirm: 'Release kill switch',
    fields: [reasonField(false)],
    run: (v) => api('POST', '/api/control/kill-switch/disable', note(v)),
    done: 'Kill switch released',
  }));

  function clusterPath(id, rest) {
    return `/api/control/cluster/${encodeURIComponent(id)}/${rest}`;
  }

  function toggleCluster(id) {
    const view = lastControl && lastControl.clusters[id];
    if (!view) return;
    if (view.enabled) {
      ask({
        title: `Disable ${id}?`,
        text: `Every route of ${id} will answer 503; other clusters are untouched.`,
        confirm: `Disable ${id}`,
        danger: true,
        fields: [reasonField(true), ttlField],
        run: (v) => api('POST', clusterPath(id, 'disable'), note(v)),
        done: `${id} disabled`,
      });
    } else {
      ask({
        title: `Enable ${id}?`,
        text: `Traffic to ${id} flows again (unless the global kill switch is engaged).`,
        confirm: `Enable ${id}`,
        fields: [reasonField(false)],
        run: (v) => api('POST', clusterPath(id, 'enable'), note(v)),
        done: `${id} enabled`,
      });
    }
  }

  function editLimits(id) {
    const view = lastControl && lastControl.clusters[id];
    if (!view) return;
    const rl = view.rateLimit;
    ask({
      title: `Rate limits of ${id}`,
      text: 'Requests admitted per window; a request must fit every window. Empty leaves a value unchanged; 0 blocks all.',
      confirm: 'Apply limits',
      fields: [
        limitField('requestsPerMinute', 'Requests per minute', rl.requestsPerMinute),
        limitField('requestsPerHour', 'Requests per hour', rl.requestsPerHour),
        limitField('requestsPerDay', 'Requests per day', rl.requestsPerDay),
        { name: 'enabled', label: 'Enforce the rate limit', type: 'checkbox', value: rl.enabled },
        reasonField(false),
      ],
      run: (v) => {
        const body = { enabled: v.enabled, disabledBy: actor() };
        for (const k of ['requestsPerMinute', 'requestsPerHour', 'requestsPerDay']) {
          if (v[k] !== undefined) body[k] = v[k];
        }
        if (v.reason) body.reason = v.reason;
        return api('POST', clusterPath(id, 'rate-limit'), body);
      },
      done: `Rate limits of ${id} updated`,
    });
  }

  function breakerAction(id, action) {
    const trip = action === 'trip';
    ask({
      title: trip ? `Trip the breaker of ${id}?` : `Reset the breaker of ${id}?`,
      text: trip
        ? `The breaker is forced open: ${id} answers 503 until someone resets it.`
        : `The breaker closes and its statistics start afresh; ${id} takes traffic again.`,
      confirm: trip ? 'Trip breaker' : 'Reset breaker',
      danger: trip,
      fields: [reasonField(false)],
      run: (v) => api('POST', clusterPath(id, `circuit-breaker/${action}`), note(v)),
      done: trip ? `Breaker of ${id} tripped` : `Breaker of ${id} reset`,
    });
  }

  function addCredit(id) {
    ask({
      title: `Add credit to ${id}?`,
      text: 'The amount is in minor units (cents): 500 is 5.00 USD. Credit only grows here.',
      confirm: 'Add credit',
      fields: [{
        name: 'amount',
        label: 'Amount (minor units)',
        numeric: true,
        required: true,
        validate: (v) => (/^\d+$/.test(v) && Number(v) > 0 && Number.isSafeInteger(Number(v))
          ? null : 'A positive whole number of minor units.'),
        parse: Number,
      }],
      run: (v) => api('POST', `/api/billable/accounts/${encodeURIComponent(id)}/credit`, { amount: v.amount }),
      done: `Credit added to ${id}`,
    });
  }

  $('account-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const input = $('account-id');
    const id = input.value.trim() || 'default';
    if (!ACCOUNT_RE.test(id)) {
      setText($('account-id-error'), '1 to 128 of A-Z a-z 0-9 . _ @ : -');
      input.setAttribute('aria-invalid', 'true');
      input.focus();
      return;
    }
    setText($('account-id-error'), '');
    input.removeAttribute('aria-invalid');
    account = id;
    delete $('account-view').dataset.error;
    replace($('account-view'), el('p', { class: 'muted', text: `Looking up ${id}…` }));
    try {
      await refreshAccount();
    } catch (err) {
      forget(errorProblem(err));
    }
  });

  // ---- start ---------------------------------------------------------------------------

  $('login-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const value = $('token').value.trim();
    if (!value) {
      setText($('token-error'), 'Paste the admin token first.');
      $('token').setAttribute('aria-invalid', 'true');
      $('token').focus();
      return;
    }
    setText($('token-error'), '');
    $('token').removeAttribute('aria-invalid');
    token = value;
    sessionStorage.setItem(TOKEN_KEY, value);
    sessionStorage.setItem(ACTOR_KEY, $('actor').value.trim());
    $('token').value = '';
    connect();
  });

  $('sign-out').addEventListener('click', () => forget(null));
  setInterval(tick, 1000);
  $('actor').value = sessionStorage.getItem(ACTOR_KEY) || '';
  if (token) connect();
})();

// memos-proxy memory inspector. Plain JS, no dependencies; talks only to this proxy's REST API.
// Memory text is untrusted: everything shown goes through textContent (no HTML parsing anywhere).
"use strict";

const KEY = "memos-inspector-key"; // sessionStorage only: never a URL, never localStorage
const $ = (id) => document.getElementById(id);
let currentUser = null;
let currentMemory = null;
let memoriesCursor = null;
let auditCursor = null;

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function status(text, error) {
  $("status").textContent = text || "";
  $("status").className = error ? "error" : "";
}

function when(iso) {
  return iso ? iso.replace("T", " ").replace(/\.\d+/, "").replace("+00:00", "Z") : "—";
}

async function api(method, path, body) {
  const key = sessionStorage.getItem(KEY);
  const headers = { Authorization: "Bearer " + key };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "omit", cache: "no-store", referrerPolicy: "no-referrer",
  });
  let data = null;
  try { data = await r.json(); } catch (e) { data = null; }
  if (!r.ok) {
    const message = data && data.error ? data.error.message : r.status + " " + r.statusText;
    if (r.status === 401) signOut();
    throw new Error(message);
  }
  return data;
}

function show(view) {
  for (const section of document.querySelectorAll(".view")) section.hidden = section.id !== "view-" + view;
  for (const b of document.querySelectorAll("nav button[data-view]")) b.classList.toggle("active", b.dataset.view === view);
  document.body.dataset.view = view;
}

function confirmAction(text) {
  return new Promise((resolve) => {
    const dialog = $("confirm");
    $("confirm-text").textContent = text;
    dialog.returnValue = "";
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.showModal();
  });
}

function guard(fn) {
  return async (event) => {
    if (event && event.preventDefault) event.preventDefault();
    try { await fn(event); } catch (e) { status(e.message, true); }
  };
}

// ------------------------------------------------------------------ sign in

async function signIn() {
  const key = $("key").value.trim();
  if (!key) return;
  sessionStorage.setItem(KEY, key);
  $("key").value = "";
  try {
    await loadUsers();
    $("nav").hidden = false;
    status("Signed in.");
  } catch (e) {
    sessionStorage.removeItem(KEY);
    show("signin");
    throw e;
  }
}

function signOut() {
  sessionStorage.removeItem(KEY);
  $("nav").hidden = true;
  show("signin");
}

// ------------------------------------------------------------------ users and their memories

async function loadUsers() {
  const data = await api("GET", "/v1/users");
  const body = $("users-table").tBodies[0];
  body.replaceChildren();
  for (const u of data.data) {
    const row = el("tr");
    row.append(el("td", u.user, "user-id"));
    const cell = el("td");
    const open = el("button", "Memories");
    open.type = "button";
    open.className = "open-user";
    open.dataset.user = u.user;
    open.addEventListener("click", guard(() => openUser(u.user)));
    cell.append(open);
    row.append(cell);
    body.append(row);
  }
  $("users-empty").hidden = data.data.length > 0;
  show("users");
}

async function openUser(user, more) {
  currentUser = user;
  if (!more) memoriesCursor = null;
  const q = new URLSearchParams({ user, limit: "50" });
  if (more && memoriesCursor) q.set("cursor", memoriesCursor);
  const data = await api("GET", "/v1/memories?" + q.toString());
  $("memories-user").textContent = user;
  $("search-user").value = user;
  const body = $("memories-table").tBodies[0];
  if (!more) body.replaceChildren();
  for (const m of data.data) body.append(memoryRow(m));
  memoriesCursor = data.next_cursor;
  $("more-memories").hidden = !data.has_more;
  show("memories");
}

function sources(m) {
  return (m.sources || []).map((s) => [s.request_id, s.session && "session " + s.session].filter(Boolean).join(" · ")).join("\n") || "—";
}

function memoryRow(m) {
  const row = el("tr");
  row.className = "memory-row";
  row.dataset.id = m.id;
  row.append(el("td", m.memory, "text"), el("td", m.state), el("td", when(m.observed_at)),
    el("td", when(m.updated_at)), el("td", m.hits), el("td", m.importance), el("td", sources(m), "text"));
  const cell = el("td");
  const open = el("button", "Details & history");
  open.type = "button";
  open.className = "open-memory";
  open.addEventListener("click", guard(() => openMemory(m.id)));
  cell.append(open);
  row.append(cell);
  return row;
}

// ------------------------------------------------------------------ one memory: fields, history, edit

const FIELDS = ["user", "state", "kind", "scope", "version", "importance", "hits", "last_hit_at",
  "observed_at", "valid_from", "invalid_at", "expires_at", "created_at", "updated_at"];
const COMPARED = ["memory", "state", "importance", "valid_from", "invalid_at", "expires_at", "observed_at"];

async function openMemory(id) {
  const m = await api("GET", "/v1/memories/" + encodeURIComponent(id));
  const history = await api("GET", "/v1/memories/" + encodeURIComponent(id) + "/history");
  currentMemory = m;
  currentUser = m.user;
  $("memory-id").textContent = m.id;
  const fields = $("memory-fields");
  fields.replaceChildren(el("dt", "text"), el("dd", m.memory, "memory-text"));
  for (const f of FIELDS) {
    const v = m[f];
    fields.append(el("dt", f), el("dd", f.endsWith("_at") || f === "valid_from" ? when(v) : v === null ? "—" : v));
  }
  fields.append(el("dt", "sources"), el("dd", sources(m)));
  $("edit-text").value = m.memory;
  $("edit-importance").value = m.importance;
  const list = $("history");
  list.replaceChildren();
  let previous = null;
  for (const v of history.data) {
    const item = el("li");
    item.className = "version";
    item.append(el("strong", "v" + v.version + " · " + v.state + " · " + when(v.updated_at)));
    item.append(el("div", v.memory, "text"));
    const changes = el("div", null, "change");
    if (previous === null) {
      changes.append(el("span", "first version"));
    } else {
      const changed = COMPARED.filter((f) => JSON.stringify(previous[f]) !== JSON.stringify(v[f]));
      if (changed.length === 0) changes.append(el("span", "no field changed"));
      for (const f of changed) {
        const line = el("div");
        line.append(el("span", f + ": "), el("span", previous[f] ?? "—", "old"), el("span", " → "), el("span", v[f] ?? "—", "new"));
        changes.append(line);
      }
    }
    item.append(changes);
    list.append(item);
    previous = v;
  }
  show("memory");
}

async function saveEdit() {
  const patch = {};
  const text = $("edit-text").value;
  const importance = parseFloat($("edit-importance").value);
  if (text !== currentMemory.memory) patch.text = text;
  if (!Number.isNaN(importance) && importance !== currentMemory.importance) patch.importance = importance;
  if (Object.keys(patch).length === 0) { status("Nothing changed."); return; }
  if (!(await confirmAction("Save this edit to memory " + currentMemory.id + "?"))) return;
  await api("PATCH", "/v1/memories/" + encodeURIComponent(currentMemory.id), patch);
  status("Saved.");
  await openMemory(currentMemory.id);
}

async function deleteMemory() {
  if (!(await confirmAction("Delete memory " + currentMemory.id + "? It stops being injected."))) return;
  await api("DELETE", "/v1/memories/" + encodeURIComponent(currentMemory.id));
  status("Deleted " + currentMemory.id + ".");
  await openUser(currentUser);
}

async function eraseUser() {
  const user = currentUser;
  if (!(await confirmAction("Erase every memory of user “" + user + "”, everywhere? This cannot be undone."))) return;
  const data = await api("DELETE", "/v1/memories?" + new URLSearchParams({ user }).toString());
  status("Erased user " + user + ": " + JSON.stringify(data.counts));
  await loadUsers();
}

// ------------------------------------------------------------------ search

async function search() {
  const body = { user: $("search-user").value.trim(), query: $("search-query").value, top_k: parseInt($("search-top-k").value, 10) || 10, injection: true };
  const data = await api("POST", "/v1/memories/search", body);
  const rows = $("search-table").tBodies[0];
  rows.replaceChildren();
  for (const h of data.data) {
    const row = el("tr");
    row.className = "hit-row";
    row.append(el("td", h.score.toFixed(4)), el("td", h.memory, "text"), el("td", h.state), el("td", when(h.observed_at)));
    const cell = el("td");
    const open = el("button", "Details & history");
    open.type = "button";
    open.addEventListener("click", guard(() => openMemory(h.id)));
    cell.append(open);
    row.append(cell);
    rows.append(row);
  }
  const block = data.injection;
  $("injection-summary").textContent = block.memory_ids.length
    ? block.memory_ids.length + " memory(ies), about " + block.tokens + " tokens:"
    : "Nothing would be injected for this query.";
  $("injection-block").textContent = block.block;  // text, never markup
  status(data.data.length + " hit(s).");
}

// ------------------------------------------------------------------ audit

async function loadAudit(more) {
  if (!more) auditCursor = null;
  const q = new URLSearchParams({ limit: "100" });
  if (more && auditCursor) q.set("cursor", auditCursor);
  const data = await api("GET", "/v1/audit?" + q.toString());
  const rows = $("audit-table").tBodies[0];
  if (!more) rows.replaceChildren();
  for (const e of data.data) {
    const row = el("tr");
    row.className = "audit-row";
    const details = [e.memory_ids.length ? e.memory_ids.length + " memory id(s)" : "", Object.keys(e.detail).length ? JSON.stringify(e.detail) : ""].filter(Boolean).join(" · ");
    row.append(el("td", e.seq), el("td", typeof e.ts === "number" ? new Date(e.ts * 1000).toISOString() : e.ts),
      el("td", e.action), el("td", e.user ?? "—"), el("td", e.key_id), el("td", details, "text"));
    rows.append(row);
  }
  auditCursor = data.next_cursor;
  $("more-audit").hidden = !data.has_more;
  show("audit");
}

async function verifyAudit() {
  const r = await api("GET", "/v1/audit/verify");
  const out = $("verify-result");
  out.className = r.ok ? "ok" : "bad";
  out.textContent = r.ok
    ? "Chain intact: " + r.entries + " entries verified."
    : "Chain broken at entry " + r.first_bad + ": " + r.reason + " (" + r.entries + " entries).";
}

// ------------------------------------------------------------------ wiring

document.addEventListener("DOMContentLoaded", () => {
  $("signin-form").addEventListener("submit", guard(signIn));
  $("sign-out").addEventListener("click", () => { signOut(); status("Signed out."); });
  $("nav-users").addEventListener("click", guard(() => { status(""); return loadUsers(); }));
  $("nav-search").addEventListener("click", () => { status(""); show("search"); });
  $("nav-audit").addEventListener("click", guard(() => { status(""); return loadAudit(false); }));
  $("more-audit").addEventListener("click", guard(() => loadAudit(true)));
  $("more-memories").addEventListener("click", guard(() => openUser(currentUser, true)));
  $("erase-user").addEventListener("click", guard(eraseUser));
  $("edit-form").addEventListener("submit", guard(saveEdit));
  $("delete-memory").addEventListener("click", guard(deleteMemory));
  $("back-to-user").addEventListener("click", guard(() => openUser(currentUser)));
  $("search-form").addEventListener("submit", guard(search));
  $("verify-audit").addEventListener("click", guard(verifyAudit));
  if (sessionStorage.getItem(KEY)) {
    $("nav").hidden = false;
    loadUsers().catch((e) => { status(e.message, true); signOut(); });
  } else {
    show("signin");
  }
});

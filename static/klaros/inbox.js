// Inbox behaviour on top of htmx. Every page works without it (minus live updates).
(() => {
  "use strict";

  // Filters: changing a select applies it at once.
  document.addEventListener("change", (event) => {
    const select = event.target.closest("select[data-autosubmit-filter]");
    if (select && select.form) select.form.requestSubmit();
  });

  const scroller = () => document.getElementById("thread-scroll");
  const nearBottom = (el) => el.scrollHeight - el.scrollTop - el.clientHeight < 120;
  let stickToBottom = true;

  const scrollToEnd = () => {
    const el = scroller();
    if (el) el.scrollTop = el.scrollHeight;
  };

  document.addEventListener("DOMContentLoaded", () => {
    // Opening a conversation shows its newest messages, unless a #m-... link asked for one.
    if (!window.location.hash) scrollToEnd();
  });

  document.addEventListener("htmx:beforeSwap", (event) => {
    const el = scroller();
    if (el && event.detail.target && event.detail.target.id === "thread-messages") {
      stickToBottom = nearBottom(el);
    }
  });

  document.addEventListener("htmx:afterSwap", (event) => {
    const list = event.detail.target;
    if (!list || list.id !== "thread-messages") return;
    // A message is shown once even if two polls overlapped.
    const seen = new Set();
    list.querySelectorAll("[data-message-id]").forEach((item) => {
      const id = item.getAttribute("data-message-id");
      if (seen.has(id)) item.remove();
      else seen.add(id);
    });
    if (stickToBottom) scrollToEnd();
  });

  // ---- Live ticks and the window line ---------------------------------------------------
  // Each poll says which outbound messages the page shows with a status that can still
  // change, and the composer's state; the server answers only what differs (204 otherwise).
  const FINAL = new Set(["read", "played", "failed"]);
  const MAX_TICKS = 100;

  document.addEventListener("htmx:configRequest", (event) => {
    const elt = event.detail.elt;
    if (!elt || elt.id !== "thread-poller") return;
    const pending = [];
    document.querySelectorAll('#thread-messages [data-direction="out"]').forEach((item) => {
      const status = item.getAttribute("data-status");
      if (!FINAL.has(status)) pending.push(`${item.getAttribute("data-message-id")}:${status}`);
    });
    if (pending.length) event.detail.parameters.ticks = pending.slice(-MAX_TICKS).join(",");
    const composer = document.getElementById("composer");
    const line = document.getElementById("window-status");
    if (composer && line) {
      event.detail.parameters.mode = composer.getAttribute("data-mode") || "";
      event.detail.parameters.window = line.getAttribute("data-window-key") || "";
    }
  });

  // After a send the server asks for an immediate poll, so the new message shows at once.
  document.addEventListener("klaros:thread-changed", () => {
    const poller = document.getElementById("thread-poller");
    if (!poller || !window.htmx) return;
    stickToBottom = true;
    window.htmx.ajax("GET", poller.getAttribute("hx-get"), {
      source: poller,
      target: "#thread-messages",
      swap: "beforeend",
    });
  });

  // ---- Quoting a message ----------------------------------------------------------------
  const quoteBox = () => document.getElementById("reply-quote");

  document.addEventListener("click", (event) => {
    const button = event.target.closest("[data-quote-id]");
    if (button) {
      const box = quoteBox();
      const field = document.getElementById("reply-quote-id");
      if (!box || !field) return;
      const item = button.closest("[data-message-id]");
      const text = item ? item.querySelector(".bubble .msg-text, .bubble .msg-label") : null;
      field.value = button.getAttribute("data-quote-id");
      // textContent only: the quoted text came from a customer.
      box.querySelector("[data-quote-text]").textContent = text
        ? text.textContent.trim().slice(0, 120)
        : "a message";
      box.querySelector(".quote-who").textContent =
        item && item.getAttribute("data-direction") === "out"
          ? "Replying to your message"
          : "Replying to the customer";
      box.hidden = false;
      const body = document.getElementById("reply-body");
      if (body) body.focus();
      return;
    }
    if (event.target.closest("[data-quote-cancel]")) {
      const box = quoteBox();
      const field = document.getElementById("reply-quote-id");
      if (box) box.hidden = true;
      if (field) field.value = "";
    }
  });

  // Ctrl+Enter (or Cmd+Enter) sends the reply.
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Enter" || !(event.ctrlKey || event.metaKey)) return;
    const form = event.target.closest("#reply-form");
    if (form) {
      event.preventDefault();
      form.requestSubmit();
    }
  });

  document.addEventListener("htmx:afterSwap", (event) => {
    if (event.detail.target && event.detail.target.id === "composer") {
      const body = document.getElementById("reply-body");
      if (body && !body.value) body.focus();
    }
  });
})();

/* Laoshi: the small amount of script the pages need. No inline script anywhere: data
   arrives through json_script blocks, and every page also works without this file. */
(function () {
  "use strict";

  var DRAFT_PREFIX = "laoshi-draft-";
  var PENDING_CLEAR = "laoshi-drafts-to-clear";

  function readConfig(root) {
    var node = root.querySelector("#task-config");
    if (!node) return null;
    try { return JSON.parse(node.textContent); } catch (e) { return null; }
  }

  function storage(kind) {
    try { var s = window[kind]; s.setItem("laoshi-probe", "1"); s.removeItem("laoshi-probe"); return s; }
    catch (e) { return null; }
  }

  /* --- drafts: a demonstration survives a reload until it is submitted --- */
  function clearSubmittedDrafts(currentAssignment) {
    var session = storage("sessionStorage"), local = storage("localStorage");
    if (!session || !local) return;
    var pending = JSON.parse(session.getItem(PENDING_CLEAR) || "null");
    if (pending && String(pending.assignment) !== String(currentAssignment)) {
      pending.keys.forEach(function (key) { local.removeItem(DRAFT_PREFIX + key); });
      session.removeItem(PENDING_CLEAR);
    }
  }

  /* A skipped task never comes back to this annotator, so its draft goes too. */
  function initDrafts(form, skipForm) {
    var local = storage("localStorage");
    form.querySelectorAll(".js-draft").forEach(function (area) {
      var key = DRAFT_PREFIX + area.dataset.draftKey;
      if (local && !area.value && local.getItem(key)) {
        area.value = local.getItem(key);
        var details = area.closest("details");
        if (details) details.open = true;
      }
      area.addEventListener("input", function () {
        if (local) local.setItem(key, area.value);
      });
    });
    var forget = function () {
      var session = storage("sessionStorage");
      if (!session) return;
      var keys = Array.prototype.map.call(form.querySelectorAll(".js-draft"), function (a) {
        return a.dataset.draftKey;
      });
      session.setItem(PENDING_CLEAR, JSON.stringify({assignment: form.dataset.assignment, keys: keys}));
    };
    form.addEventListener("submit", forget);
    if (skipForm) skipForm.addEventListener("submit", forget);
  }

  function initCounters(form) {
    form.querySelectorAll(".js-count").forEach(function (area) {
      var out = area.parentNode.querySelector(".js-char-count");
      if (!out) return;
      var update = function () { out.textContent = String(area.value.length); };
      area.addEventListener("input", update);
      update();
    });
  }

  /* --- ranking: keyboard first, drag and drop too --- */
  function cards(form) { return Array.prototype.slice.call(form.querySelectorAll(".response-card")); }

  function selectFor(card) { return card.querySelector(".rank-select"); }

  function showRank(card) {
    var value = selectFor(card).value;
    card.dataset.rank = value;
    card.classList.toggle("ranked", value !== "");
  }

  function setRank(form, card, rank, config) {
    var select = selectFor(card);
    var previous = select.value;
    if (!config.allowTies) {
      cards(form).forEach(function (other) {
        if (other !== card && selectFor(other).value === String(rank)) {
          selectFor(other).value = previous; /* swap: the other takes the old rank */
          showRank(other);
        }
      });
    }
    select.value = String(rank);
    showRank(card);
  }

  function initRanking(form, config) {
    var list = form.querySelector("#responses");
    if (!list) return;
    cards(form).forEach(function (card) {
      showRank(card);
      selectFor(card).addEventListener("change", function () { showRank(card); });
    });
    form.addEventListener("keydown", function (event) {
      var card = event.target.closest ? event.target.closest(".response-card") : null;
      var onCard = card && event.target === card;
      var all = cards(form);
      if (!onCard) return;
      var index = all.indexOf(card);
      if (event.key === "ArrowDown" || event.key === "ArrowRight") {
        event.preventDefault();
        all[Math.min(index + 1, all.length - 1)].focus();
      } else if (event.key === "ArrowUp" || event.key === "ArrowLeft") {
        event.preventDefault();
        all[Math.max(index - 1, 0)].focus();
      } else if (event.shiftKey && /^Digit[1-7]$/.test(event.code) && !event.ctrlKey &&
                 !event.metaKey && !event.altKey) {
        /* Shift+1..7: the quality rating of the focused response (focus stays). */
        event.preventDefault();
        var rating = card.querySelector(".rating-select");
        if (rating) rating.value = event.code.slice(-1);
      } else if (/^[1-9]$/.test(event.key) && !event.ctrlKey && !event.metaKey && !event.altKey) {
        var rank = Number(event.key);
        if (rank > config.k) return;
        event.preventDefault();
        setRank(form, card, rank, config);
        var next = all.slice(index + 1).concat(all.slice(0, index)).filter(function (c) {
          return selectFor(c).value === "";
        })[0];
        if (next) next.focus();
      }
    });
    if (window.Sortable) {
      window.Sortable.create(list, {
        animation: 120,
        handle: ".response-head",
        filter: "select, option, label",
        preventOnFilter: false,
        onEnd: function (event) {
          cards(form).forEach(function (card, i) { selectFor(card).value = String(i + 1); showRank(card); });
          /* keep the keyboard going from the card just dropped */
          if (event.item) event.item.focus({preventScroll: true});
        }
      });
    }
    var first = cards(form)[0];
    if (first) first.focus({preventScroll: true});
  }

  /* --- submit from the keyboard; time spent --- */
  function initSubmitKeys(form) {
    form.dataset.started = String(Date.now());
    form.addEventListener("keydown", function (event) {
      if (event.key !== "Enter" || event.isComposing) return;
      var tag = event.target.tagName;
      var inText = tag === "TEXTAREA" || (tag === "INPUT" && event.target.type === "text");
      if (inText && !(event.ctrlKey || event.metaKey)) return;
      if (tag === "SUMMARY" || tag === "BUTTON" || tag === "SELECT") return;
      event.preventDefault();
      if (form.requestSubmit) form.requestSubmit(); else form.submit();
    });
  }

  function initPanel(root) {
    var form = root.querySelector("#task-form");
    if (!form || form.dataset.ready) return;
    form.dataset.ready = "1";
    var config = readConfig(root) || {};
    clearSubmittedDrafts(form.dataset.assignment);
    initDrafts(form, root.querySelector(".skip-form"));
    initCounters(form);
    initSubmitKeys(form);
    if (form.classList.contains("kind-rank")) initRanking(form, config);
  }

  function initPage() {
    document.querySelectorAll(".js-autosubmit").forEach(function (select) {
      select.addEventListener("change", function () { select.form.submit(); });
    });
    initPanel(document);
    var panel = document.getElementById("task-panel");
    if (panel && !panel.querySelector("#task-form")) clearSubmittedDrafts("none");
  }

  /* Capture phase on the document: runs before htmx's own submit listener on the form,
     which reads the form's values at once. */
  function recordTimeSpent(event) {
    var form = event.target;
    if (!form || form.id !== "task-form" || !form.dataset.started) return;
    var spent = form.querySelector(".js-time-spent");
    if (spent) spent.value = String(Date.now() - Number(form.dataset.started));
  }

  /* A polled fragment (a training run's charts and their numbers) is replaced every few
     seconds: the <details> a reader opened stay open across the swap. */
  var openDetails = [];
  document.addEventListener("htmx:beforeSwap", function (event) {
    var target = event.detail && event.detail.target;
    openDetails = target ? Array.prototype.map.call(
      target.querySelectorAll("details[id][open]"), function (d) { return d.id; }) : [];
  });
  document.addEventListener("htmx:afterSettle", function () {
    openDetails.forEach(function (id) {
      var details = document.getElementById(id);
      if (details) details.open = true;
    });
    openDetails = [];
  });

  document.addEventListener("submit", recordTimeSpent, true);
  document.addEventListener("DOMContentLoaded", initPage);
  document.addEventListener("htmx:afterSwap", function (event) {
    var target = event.detail && event.detail.target;
    if (target && target.id === "task-panel") {
      initPanel(target);
      if (!target.querySelector("#task-form")) clearSubmittedDrafts("none");
    }
  });
})();

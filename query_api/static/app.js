/* Audit log viewer: progressive enhancement only; every page works without it. */
(function () {
  "use strict";

  var TIME_FORMAT = {
    year: "numeric", month: "short", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: "2-digit"
  };

  var TZ_KEY = "auditlog.tz";
  var SAVED_KEY = "auditlog.saved-searches";

  function store(key, value) {
    try {
      if (value === undefined) { return window.localStorage.getItem(key); }
      window.localStorage.setItem(key, value);
    } catch (e) { /* storage refused (private mode): the page still works */ }
    return null;
  }

  function utcMode() { return store(TZ_KEY) === "utc"; }

  // The server renders UTC; people read their own clock, so convert in the browser unless
  // the reader asked for UTC (the switch beside the results).
  function localizeTimes() {
    var utc = utcMode();
    var options = utc ? Object.assign({ timeZone: "UTC" }, TIME_FORMAT) : TIME_FORMAT;
    document.querySelectorAll("time[datetime]").forEach(function (el) {
      var iso = el.getAttribute("datetime");
      var when = new Date(iso);
      if (isNaN(when.getTime())) { return; }
      el.textContent = when.toLocaleString(undefined, options) + (utc ? " UTC" : "");
      el.title = iso.replace("T", " ").replace("Z", " UTC");
      el.setAttribute("data-localized", utc ? "utc" : "local");
    });
    var zone = "";
    try { zone = Intl.DateTimeFormat().resolvedOptions().timeZone || ""; } catch (e) { zone = ""; }
    var shown = utc ? "UTC" : (zone ? zone.replace(/_/g, " ") : "your time zone");
    document.querySelectorAll("[data-tz]").forEach(function (el) { el.textContent = shown; });
    document.querySelectorAll("[data-range-label]").forEach(function (el) {
      el.textContent = el.textContent.replace(/\(.*\)/, "(" + shown + ")");
    });
    var toggle = document.getElementById("tz-toggle");
    if (toggle) {
      toggle.hidden = false;
      toggle.textContent = utc ? "Show local time" : "Show UTC";
    }
  }

  function timeZoneSwitch() {
    var toggle = document.getElementById("tz-toggle");
    if (!toggle) { return; }
    toggle.addEventListener("click", function () {
      store(TZ_KEY, utcMode() ? "local" : "utc");
      localizeTimes();
    });
  }

  // datetime-local holds no zone: send what the reader meant, in UTC, as the server reads it.
  function rangeInUtc() {
    var form = document.getElementById("search-form");
    if (!form) { return; }
    form.addEventListener("submit", function () {
      form.querySelectorAll("input[data-utc-input]").forEach(function (input) {
        if (!input.value || utcMode()) { return; }
        var when = new Date(input.value);
        if (isNaN(when.getTime())) { return; }
        input.type = "text";
        input.value = when.toISOString().replace(/\.000Z$/, "Z");
      });
    });
  }

  // Alt-click on a facet value excludes it instead of filtering on it.
  function facetExclude() {
    document.querySelectorAll("a.facet-value[data-exclude-href]").forEach(function (link) {
      link.addEventListener("click", function (event) {
        if (!event.altKey) { return; }
        event.preventDefault();
        window.location.href = link.getAttribute("data-exclude-href");
      });
    });
  }

  // Drag across the timeline's bars to zoom into that range; a click zooms into one bar.
  function timelineZoom() {
    var svg = document.querySelector("#timeline svg");
    if (!svg) { return; }
    var bars = Array.prototype.slice.call(svg.querySelectorAll("a.bar"));
    var first = null;
    var moved = false;
    function barAt(event) {
      var box = svg.getBoundingClientRect();
      var i = Math.floor((event.clientX - box.left) / box.width * bars.length);
      return Math.max(0, Math.min(bars.length - 1, i));
    }
    function mark(a, b) {
      bars.forEach(function (bar, i) { bar.classList.toggle("is-selected", i >= a && i <= b); });
    }
    svg.addEventListener("pointerdown", function (event) {
      if (event.button !== 0) { return; }
      first = barAt(event);
      moved = false;
      mark(first, first);
    });
    svg.addEventListener("pointermove", function (event) {
      if (first === null) { return; }
      var i = barAt(event);
      if (i !== first) { moved = true; }
      mark(Math.min(first, i), Math.max(first, i));
    });
    svg.addEventListener("pointerup", function (event) {
      if (first === null) { return; }
      var last = barAt(event);
      var a = Math.min(first, last), b = Math.max(first, last);
      first = null;
      if (!moved) { mark(-1, -1); return; }  // a click: the bar's own link zooms
      event.preventDefault();
      var q = (svg.getAttribute("data-zoom-q") || "").trim();
      var range = "after:" + bars[a].getAttribute("data-start") + " before:" + bars[b].getAttribute("data-end");
      var url = new URL(svg.getAttribute("data-zoom-base"), window.location.href);
      url.searchParams.set("q", (q ? q + " " : "") + range);
      window.location.href = url.toString();
    });
    svg.addEventListener("click", function (event) { if (moved) { event.preventDefault(); moved = false; } });
  }

  // Saved searches live in this browser; a search is its address, so a link shares it.
  function savedSearches() {
    var box = document.getElementById("saved-searches");
    if (!box) { return; }
    box.hidden = false;
    var list = document.getElementById("saved-list");
    function load() {
      try { return JSON.parse(store(SAVED_KEY) || "[]"); } catch (e) { return []; }
    }
    function render() {
      var saved = load();
      list.textContent = "";
      if (!saved.length) {
        var empty = document.createElement("li");
        empty.className = "muted";
        empty.textContent = "None yet";
        list.appendChild(empty);
      }
      saved.forEach(function (item, i) {
        var li = document.createElement("li");
        var link = document.createElement("a");
        link.href = item.url;
        link.textContent = item.name;
        var remove = document.createElement("button");
        remove.type = "button";
        remove.textContent = "×";
        remove.setAttribute("aria-label", "Forget " + item.name);
        remove.addEventListener("click", function () {
          var next = load();
          next.splice(i, 1);
          store(SAVED_KEY, JSON.stringify(next));
          render();
        });
        li.appendChild(link);
        li.appendChild(remove);
        list.appendChild(li);
      });
    }
    var nameBox = document.getElementById("save-name");
    function save() {
      var q = (document.getElementById("q") || {}).value || "";
      var name = (nameBox.value || "").trim() || q || "All events";
      var url = new URL(window.location.href);
      ["cursor", "trail", "at"].forEach(function (k) { url.searchParams.delete(k); });
      var saved = load().filter(function (item) { return item.name !== name; });
      saved.push({ name: name, url: url.pathname + url.search });
      store(SAVED_KEY, JSON.stringify(saved));
      nameBox.value = "";
      render();
    }
    document.getElementById("save-search").addEventListener("click", save);
    // Enter in the name box saves; it must not submit the search form around it.
    nameBox.addEventListener("keydown", function (event) {
      if (event.key === "Enter") { event.preventDefault(); save(); }
    });
    document.getElementById("copy-link").addEventListener("click", function () {
      var button = this;
      var share = document.getElementById("share-url");
      var link = window.location.href;
      function shown() {
        share.hidden = false;
        share.value = link;
        share.select();
      }
      if (navigator.clipboard && navigator.clipboard.writeText) {
        navigator.clipboard.writeText(link).then(function () { button.textContent = "Link copied"; }, shown);
      } else {
        shown();
      }
    });
    render();
  }

  function autosubmit() {
    document.querySelectorAll("select[data-autosubmit]").forEach(function (select) {
      select.addEventListener("change", function () {
        var form = select.form;
        if (!form) { return; }
        if (typeof form.requestSubmit === "function") { form.requestSubmit(); } else { form.submit(); }
      });
    });
  }

  // "/" jumps to the search box, as in most consoles; typing elsewhere is left alone.
  function searchShortcut() {
    var box = document.getElementById("q");
    if (!box) { return; }
    document.addEventListener("keydown", function (event) {
      if (event.key !== "/" || event.ctrlKey || event.metaKey || event.altKey) { return; }
      var tag = (document.activeElement && document.activeElement.tagName) || "";
      if (tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT") { return; }
      event.preventDefault();
      box.focus();
      box.select();
    });
  }

  // New matching events, counted by the server (server-sent events on the page's own address).
  function liveUpdates() {
    var box = document.getElementById("live");
    if (!box || !window.EventSource) { return; }
    box.hidden = false;
    var status = document.getElementById("live-status");
    var show = document.getElementById("live-show");
    var pause = document.getElementById("live-pause");
    var url = new URL(window.location.href);
    url.searchParams.set("live_after", box.getAttribute("data-live-after"));
    var source = null;
    function open() {
      source = new EventSource(url.toString());
      status.textContent = "Live";
      source.addEventListener("count", function (event) {
        var n = JSON.parse(event.data)["new"];
        show.hidden = n === 0;
        show.textContent = "Show " + n + " new event" + (n === 1 ? "" : "s");
      });
      source.addEventListener("end", function () {
        source.close();
        status.textContent = "Live updates ended (signed out)";
      });
      source.addEventListener("unavailable", function () {
        source.close();
        status.textContent = "Live updates paused: the store did not answer";
      });
    }
    pause.addEventListener("click", function () {
      var paused = pause.getAttribute("aria-pressed") === "true";
      if (paused) {
        open();
        pause.textContent = "Pause";
      } else {
        if (source) { source.close(); }
        status.textContent = "Paused";
        pause.textContent = "Resume";
      }
      pause.setAttribute("aria-pressed", paused ? "false" : "true");
      box.classList.toggle("is-paused", !paused);
    });
    open();
  }

  function start() {
    localizeTimes();
    timeZoneSwitch();
    rangeInUtc();
    facetExclude();
    timelineZoom();
    savedSearches();
    liveUpdates();
    autosubmit();
    searchShortcut();
    document.documentElement.setAttribute("data-ready", "true");
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();

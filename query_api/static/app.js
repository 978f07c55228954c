/* Audit log viewer: progressive enhancement only; every page works without it. */
(function () {
  "use strict";

  var TIME_FORMAT = {
    year: "numeric", month: "short", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: "2-digit"
  };

  // The server renders UTC; people read their own clock, so convert in the browser.
  function localizeTimes() {
    document.querySelectorAll("time[datetime]").forEach(function (el) {
      var iso = el.getAttribute("datetime");
      var when = new Date(iso);
      if (isNaN(when.getTime())) { return; }
      el.textContent = when.toLocaleString(undefined, TIME_FORMAT);
      el.title = iso.replace("T", " ").replace("Z", " UTC");
      el.setAttribute("data-localized", "true");
    });
    var zone = "";
    try { zone = Intl.DateTimeFormat().resolvedOptions().timeZone || ""; } catch (e) { zone = ""; }
    document.querySelectorAll("[data-tz]").forEach(function (el) {
      el.textContent = zone ? zone.replace(/_/g, " ") : "your time zone";
    });
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

  function start() {
    localizeTimes();
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

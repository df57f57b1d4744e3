// The inbox's only script: SLA countdowns, and the acknowledge / pass / release buttons without a page reload.
// Without JavaScript the forms post normally and the server redirects back.
(function () {
  "use strict";
  function left(ms) {
    if (ms <= 0) return "SLA overdue";
    var s = Math.floor(ms / 1000), h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
    return (h ? h + " h " : "") + m + " min " + (s % 60) + " s left to acknowledge";
  }
  function tick() {
    document.querySelectorAll("[data-deadline]").forEach(function (el) {
      var ms = Number(el.getAttribute("data-deadline")) - Date.now();
      el.textContent = left(ms);
      el.classList.toggle("overdue", ms <= 0);
    });
  }
  function flash(text) {
    var main = document.getElementById("main"), p = document.createElement("p");
    p.className = "flash"; p.setAttribute("role", "status"); p.textContent = text;
    main.insertBefore(p, main.firstChild);
  }
  async function refresh() {
    var response = await fetch(location.href, {headers: {"Accept": "text/html"}, credentials: "same-origin"});
    if (!response.ok) { location.reload(); return; }
    var doc = new DOMParser().parseFromString(await response.text(), "text/html");
    document.getElementById("main").replaceWith(doc.getElementById("main"));
    bind(); tick();
  }
  function bind() {
    document.querySelectorAll("form[data-action]").forEach(function (form) {
      form.addEventListener("submit", async function (event) {
        event.preventDefault();
        var button = form.querySelector("button");
        if (button) button.disabled = true;
        try {
          var response = await fetch(form.action, {
            method: "POST", body: new FormData(form), credentials: "same-origin",
            headers: {"Accept": "application/json", "X-CSRF-Token": window.NUDGE_CSRF || ""}
          });
          var body = await response.json().catch(function () { return {}; });
          if (!response.ok) { if (button) button.disabled = false; flash(body.message || "That did not work."); return; }
          if (body.redirect) { location.assign(body.redirect); return; }
          await refresh();
          flash(body.message || "Done.");
        } catch (error) {
          if (button) button.disabled = false;
          flash("Network error: try again.");
        }
      });
    });
  }
  bind(); tick(); setInterval(tick, 1000);
})();

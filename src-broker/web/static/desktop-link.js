// "Open in desktop app" on the viewer pages: the page's one-time exchange token (from its URL
// fragment) is traded for a launch URL with POST /api/v1/sessions/{id}/launch, so that the
// reusable launch token is never in a URL the page was opened with. Shows `link` once it has one
// and calls `onReady`; without an exchange token, or on any failure, the link stays hidden.
export function offerDesktopLink(sessionId, exchange, link, onReady) {
  if (!exchange) return;
  fetch(`/api/v1/sessions/${encodeURIComponent(sessionId)}/launch`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${exchange}` },
  })
    .then((res) => (res.ok ? res.json() : null))
    .then((body) => {
      if (body && body.launch_url) {
        link.href = body.launch_url;
        link.hidden = false;
        onReady();
      }
    })
    .catch(() => {});
}

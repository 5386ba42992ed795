"""The ops page at /admin/ui: server-rendered HTML, a little vanilla JavaScript, every
asset shipped in this package (templates/, static/)."""

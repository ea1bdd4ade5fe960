"""Web foundations shared by the site console and the coordinator dashboard.

Accounts with the roles administrator and analyst, Argon2 password hashes,
server-side login sessions behind a signed cookie, CSRF tokens on every form,
rate-limited sign-in, an audit log and the base page layout. The two web apps
add their own pages on top of :func:`common.web.app.create_web_app`.
"""

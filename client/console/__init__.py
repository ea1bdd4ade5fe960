"""Site console: the web page where a hospital's security staff analyse their own traffic.

It runs at the site, by default on 127.0.0.1, scores uploaded flow files with
the site's signed model bundle and keeps the results on the site's own disk.
It sends no rows anywhere.
"""

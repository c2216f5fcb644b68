from lit_hspace.cli import run

run()

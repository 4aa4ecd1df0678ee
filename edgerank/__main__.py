from edgerank.cli.main import main

main(prog_name="edgerank")

from edgerank.cli import main

main(prog_name="edgerank")

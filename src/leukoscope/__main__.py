from leukoscope.cli import main

main()

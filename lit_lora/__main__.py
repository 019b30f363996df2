from lit_lora.cli import main

if __name__ == "__main__":
    main()
